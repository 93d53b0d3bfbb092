from .last_checkpoint import AtomicCheckpointIO, LastCheckpoint
from .run_record import RunRecord
from .sample_grid import SampleGrid

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "RunRecord", "SampleGrid"]
