"""Labels and dataset: label formats (YOLO, VOC, class folders), class names, label quality (ambiguity, imbalance,
conflicts), and the managed dataset's immutable snapshots."""
