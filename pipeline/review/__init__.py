"""Corrections from the spreadsheet: the review workbook (images that need a person, a correct-class drop-down),
and how a filled one dropped into labeled/ is checked and read; `pipeline.intake.corrections` records its rows."""
