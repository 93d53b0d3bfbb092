from .graceful_stop import GracefulStop
from .last_checkpoint import AtomicCheckpointIO, LastCheckpoint
from .progress import StepProgress, say
from .quality import DataDistances, QualityMetrics
from .run_record import RunRecord
from .sample_grid import SampleGrid
from .step_clock import StepClock

__all__ = ["AtomicCheckpointIO", "DataDistances", "GracefulStop", "LastCheckpoint", "QualityMetrics", "RunRecord",
           "SampleGrid", "StepClock", "StepProgress", "say"]
