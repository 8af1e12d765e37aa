"""The Excel report: data read from the database, sheets written with XlsxWriter, styles, and the streamed XML
for very large sheets."""
