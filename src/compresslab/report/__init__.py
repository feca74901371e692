"""Reports: read results, write HTML (self-contained, plots inline). Never trains."""
from compresslab.report.html import write_report

__all__ = ["write_report"]
