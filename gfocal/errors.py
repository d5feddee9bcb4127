"""The exceptions that mean "bad input" (shown as one message, not a traceback)."""
from gfocal.atomic import OutputError
from gfocal.config import ConfigError
from gfocal.device import DeviceError
from gfocal.finite import NonFiniteError
from gfocal.launch import LaunchError
from gfocal.precision import PrecisionError
from gfocal.state_dict import CheckpointError
from gfocal.tuning import TuningError


def _dataset_error():
    from gfocal.data.coco import DatasetError
    return DatasetError


USER_ERRORS = (ConfigError, DeviceError, LaunchError, PrecisionError, TuningError,
               CheckpointError, NonFiniteError, OutputError, _dataset_error(), FileNotFoundError)
