"""Labels and dataset: label formats (YOLO, VOC, class folders), class names, label quality (ambiguity, imbalance,
conflicts), the managed dataset's immutable snapshots, and the label audit's folds and findings (cleanlab)."""
