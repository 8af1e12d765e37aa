"""SQLAlchemy 2.0 tables, by topic: files (drops and what became of them, the service's rows), labels, training,
audit (label health). Named `tables` so that "model" only ever means an ML model; import them from here."""

from storage.tables.audit import AuditImage, ClassOverlap, LabelAudit
from storage.tables.base import Base, FsText, ShownText
from storage.tables.files import CORRECTION_FOLDER, Detection, File, FileState, Lease, Prediction, Report, Worker
from storage.tables.labels import ClassList, ClassName, Correction, DatasetVersion, Label, LabelEvent, Sample
from storage.tables.training import ModelConfusion, ModelMetric, ModelVersion, TrainingAttempt, TrainingRun

__all__ = ["AuditImage", "Base", "CORRECTION_FOLDER", "ClassList", "ClassName", "ClassOverlap", "Correction",
           "DatasetVersion", "Detection", "File", "FileState", "FsText", "Label", "LabelAudit", "LabelEvent", "Lease",
           "ModelConfusion", "ModelMetric", "ModelVersion", "Prediction", "Report", "Sample", "ShownText",
           "TrainingAttempt", "TrainingRun", "Worker"]
