"""The Summary sheet as a dashboard: the figures that matter and the warnings in words, the classes with the
champion's quality per class, charts, the champion's plots, and the charts' data; laid out for A4 landscape pages.

    page 1   item | value (counts, champion, warnings)     class | labelled | predicted | low conf. | champion ...
    page 2   [labelled vs predicted per class] [confidence histogram]
             [files decided per day (classified, labelled, quarantined)]
    then     the champion's confusion matrix and results plot, a page each; then the charts' data

The histogram and the days are counted in the database (`storage.queries.confidence_histogram`,
`files_by_hour`), never by reading the predictions one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from PIL import Image

from pipeline.report.cells import display_width
from pipeline.report.style import Book, Column, Table
from storage.queries import confidence_histogram, files_by_hour

CLASS_COL = 3  # D: the class block, after a narrow gap
CONF_COL, DAY_COL = 3, 6  # the charts' data: confidence bins in D:E, days in G:J
NUMBER_WIDTH = 11
VALUE_WIDTH = 50
PAGE_W_PX, PAGE_H_PX = 988, 650  # A4 landscape inside XlsxWriter's default margins (0.7 in, 0.75 in), 96 dpi
ROW_PX = 20
MAX_DAYS = 92  # a longer period is shown per week
SHOWN_METRICS = ("images", "precision", "recall", "map50", "map50_95", "top1")
SERIES = {"classified": "#4472C4", "labelled": "#70AD47", "quarantined": "#C00000"}  # files per day, and colour
BLUE, ORANGE, RED = "#4472C4", "#ED7D31", "#C00000"


@dataclass
class _Layout:
    """Where the sections go: column widths (characters), the page's scale, the rows each section starts at."""

    widths: list[float]
    charts_row: int  # the page break before the charts; so are the rows of `plots` and `data_row`
    data_row: int = 0
    plots: list[tuple[int, float]] | None = None  # (row, scale) per plot

    @property
    def content_px(self) -> int:
        return sum(int(w * 7 + 0.5) + 5 for w in self.widths)  # XlsxWriter's column width in pixels

    @property
    def page_px(self) -> int:
        """The sheet pixels one printed page holds below the repeated header row, with a margin for error."""
        scale = min(1.0, PAGE_W_PX / self.content_px)
        return int(0.9 * PAGE_H_PX / scale) - ROW_PX


def write_dashboard(book: Book, ws, s, *, items: list[tuple], classes: list[dict],
                    champion: tuple[list[str], list[list]], plots: list[Path]) -> Table:
    """Fill the Summary `ws`: `items` (item, value) pairs, warnings and notes among them; `classes` as
    `pipeline.report.data.class_rows` makes them; `champion` the champion's per-class figures
    (`per_class_metrics`); `plots` the champion's pictures. Returns the item/value table."""
    names, per_class = champion
    shown = [n for n in names if n in SHOWN_METRICS]
    figures = {row[0]: dict(zip(names, row[1:])) for row in per_class}
    class_rows = [[c["class"], c["labels"], c["predictions"], c["low_confidence"],
                   *(figures.get(c["class"], {}).get(n) for n in shown)] for c in classes]
    hist = confidence_histogram(s)
    step, days = _per_period(files_by_hour(s), book.tz)
    layout = _layout(items, class_rows, shown, plots)
    table = _figures(book, ws, items, class_rows, shown, layout)
    ws.set_h_pagebreaks([layout.charts_row, *(row for row, _ in layout.plots), layout.data_row])
    _data(book, ws, layout.data_row, hist, step, days)
    _charts(book, ws, layout, len(class_rows), hist, step, len(days))
    for path, (row, scale) in zip(plots, layout.plots):
        ws.insert_image(row + 1, 0, str(path), {"x_scale": scale, "y_scale": scale, "object_position": 1,
                                            "description": path.name})
    return table


def _layout(items, class_rows, metrics: list[str], plots: list[Path]) -> _Layout:
    item_w = min(36, max([20, *(display_width(str(i)) + 2 for i, _v in items)]))
    class_w = min(24, max([10, *(display_width(str(r[0])) + 2 for r in class_rows)]))
    last = max(DAY_COL + len(SERIES), CLASS_COL + 3 + len(metrics))
    heads = ["labelled", "predicted", "low confidence", *map(_metric_header, metrics)]
    numbers = [max(NUMBER_WIDTH, display_width(heads[i]) + 2 if i < len(heads) else 0)
               for i in range(last - CLASS_COL)]
    widths = [item_w, VALUE_WIDTH, 2, class_w, *numbers]
    layout = _Layout(widths, charts_row=max(len(items), len(class_rows)) + 2)
    row = layout.charts_row + 2 * math.ceil(_chart_height(layout) / ROW_PX) + 4
    layout.plots = []
    for path in plots:
        with Image.open(path) as im:  # our own plots (Ultralytics'), not a dropped file: the header only
            w, h = im.size
        scale = min(1.0, layout.content_px / w, layout.page_px / h)
        layout.plots.append((row, scale))
        row += math.ceil(h * scale / ROW_PX) + 2
    layout.data_row = row
    return layout


def _metric_header(name: str) -> str:
    return "validation images" if name == "images" else name  # what the champion was evaluated on


def _chart_height(layout: _Layout) -> int:
    return min(400, (layout.page_px - 2 * ROW_PX) // 2)


def _figures(book: Book, ws, items, class_rows, shown: list[str], layout: _Layout) -> Table:
    """The item/value list in A:B and the class block from D, written row by row (constant_memory)."""
    left = Table(book, "Summary", [Column("item"), Column("value", "any")], ws=ws, filter=False)
    figures = [Column(_metric_header(n), "int" if n == "images" else "float") for n in shown]
    right = Table(book, "Summary", [Column("class"), Column("labelled", "int"), Column("predicted", "int"),
                                    Column("low confidence", "int"), *figures],
                  ws=ws, first_col=CLASS_COL, filter=False)
    number_head = book.wb.add_format({"bold": True, "bg_color": "#DDEBF7", "bottom": 1, "align": "right"})
    for i, col in enumerate(right.columns[1:], CLASS_COL + 1):  # over their numbers, not beside them
        ws.write_string(0, i, col.name, number_head)
    wrap = book.wb.add_format({"text_wrap": True, "valign": "top"})
    warn = book.wb.add_format({"bold": True, "font_color": "#9C0006", "valign": "top"})
    for r in range(1, max(len(items), len(class_rows)) + 1):
        item, value = items[r - 1] if r <= len(items) else (None, None)
        if isinstance(value, str) and display_width(value) > VALUE_WIDTH:
            # Wrapped, in a row as tall as its lines: Excel does not fit a row to its text when it opens a file.
            ws.set_row(r, 15 * math.ceil(display_width(value) / VALUE_WIDTH), wrap)
        if item is not None:
            left.write_row(r, (item, value))
        if r <= len(class_rows):
            right.write_row(r, class_rows[r - 1])
        if item in ("warning", "note"):
            ws.write_string(r, 0, item, warn)
    left.close()
    right.close()
    for col, width in enumerate(layout.widths):  # fixed: the charts and the page are sized by them
        ws.set_column(col, col, width)
    return left


def _data(book: Book, ws, row: int, hist: list[int], step: str, days: list[tuple[date, dict]]) -> None:
    """The charts' own numbers, below them: confidence bins (D:E) and files per day or week (G:J)."""
    head, day_fmt = book.fmt["header"], book.wb.add_format({"num_format": "yyyy-mm-dd"})
    ws.write_row(row, CONF_COL, ["confidence", "images"], head)
    ws.write_row(row, DAY_COL, [step, *SERIES], head)
    width = 100 // len(hist)
    for i in range(max(len(hist), len(days))):
        r = row + 1 + i
        if i < len(hist):
            ws.write_string(r, CONF_COL, f"{i * width}-{(i + 1) * width}%")
            ws.write_number(r, CONF_COL + 1, hist[i], book.fmt["int"])
        if i < len(days):
            day, counts = days[i]
            ws.write_number(r, DAY_COL, book.excel_date(day), day_fmt)
            for k, key in enumerate(SERIES, 1):
                ws.write_number(r, DAY_COL + k, counts.get(key, 0), book.fmt["int"])


def _charts(book: Book, ws, layout: _Layout, n_classes: int, hist: list[int], step: str, n_days: int) -> None:
    name, height = ws.get_name(), _chart_height(layout)
    half = layout.content_px // 2 - 8
    # A row below each page break before a picture: one that starts on the break is also put on the page above
    # (LibreOffice), unseen but there.
    top = layout.charts_row + 1
    below = top + math.ceil(height / ROW_PX) + 1
    data = layout.data_row + 1
    if n_classes:
        chart = book.wb.add_chart({"type": "bar"})
        for col, colour in ((CLASS_COL + 1, BLUE), (CLASS_COL + 2, ORANGE)):  # labelled, predicted
            chart.add_series({"name": [name, 0, col], "categories": [name, 1, CLASS_COL, n_classes, CLASS_COL],
                              "values": [name, 1, col, n_classes, col], "fill": {"color": colour}})
        _finish(chart, "Images per class: labelled and predicted", half, height, reverse=True)
        ws.insert_chart(top, 0, chart, {"object_position": 1})
    if sum(hist):
        chart = book.wb.add_chart({"type": "column"})
        low = book.low_confidence
        points = [{"fill": {"color": RED if (i + 1) / len(hist) <= low + 1e-9 else BLUE}} for i in range(len(hist))]
        chart.add_series({"name": "images", "categories": [name, data, CONF_COL, data + len(hist) - 1, CONF_COL],
                          "values": [name, data, CONF_COL + 1, data + len(hist) - 1, CONF_COL + 1],
                          "points": points, "gap": 20})
        _finish(chart, f"Confidence of the latest predictions (red: below {low:.0%})", half, height, legend=False)
        ws.insert_chart(top, 0, chart, {"x_offset": half + 16, "object_position": 1})
    if n_days:
        chart = book.wb.add_chart({"type": "column", "subtype": "stacked"})
        for k, colour in enumerate(SERIES.values(), 1):
            chart.add_series({"name": [name, data - 1, DAY_COL + k],
                              "categories": [name, data, DAY_COL, data + n_days - 1, DAY_COL],
                              "values": [name, data, DAY_COL + k, data + n_days - 1, DAY_COL + k],
                              "fill": {"color": colour}, "gap": 30})
        chart.set_x_axis({"date_axis": True, "num_format": "mm-dd", "major_unit_type": "days"})
        _finish(chart, f"Files decided per {step}", layout.content_px - 8, height)
        ws.insert_chart(below, 0, chart, {"object_position": 1})


def _finish(chart, title: str, width: int, height: int, *, reverse: bool = False, legend: bool = True) -> None:
    chart.set_title({"name": title, "name_font": {"size": 11}})
    chart.set_legend({"position": "bottom"} if legend else {"none": True})
    if reverse:
        chart.set_y_axis({"reverse": True})  # the first class on top, as in the table
    chart.set_size({"width": width, "height": height})


def _per_period(hours, tz) -> tuple[str, list[tuple[date, dict]]]:
    """Files decided per local day (per week, from Monday, over more than MAX_DAYS), every day of the period
    listed, from hourly counts in UTC: (step, [(day, {classified, labelled, quarantined})])."""
    counts: dict[date, dict[str, int]] = {}
    for hour, state, folder, n in hours:
        day = hour.astimezone(tz).date()
        key = "quarantined" if state == "quarantined" else "labelled" if folder == "labeled" else "classified"
        into = counts.setdefault(day, {})
        into[key] = into.get(key, 0) + n
    if not counts:
        return "day", []
    first, last = min(counts), max(counts)
    step, stride = ("day", 1) if (last - first).days < MAX_DAYS else ("week", 7)
    if stride == 7:
        weeks: dict[date, dict[str, int]] = {}
        for day, c in counts.items():
            into = weeks.setdefault(day - timedelta(days=day.weekday()), {})
            for key, n in c.items():
                into[key] = into.get(key, 0) + n
        counts, first = weeks, first - timedelta(days=first.weekday())
    out, day = [], first
    while day <= last:
        out.append((day, counts.get(day, {})))
        day += timedelta(days=stride)
    return step, out
