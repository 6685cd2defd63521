"""The errors dan_jax reports to a user: one family under `Error`.

Every command line catches `Error` and prints its message as one `error: ...` line that
names the problem and the fix. A leaf module (it imports nothing), so every layer raises
these. Each error also derives from the builtin its callers caught before this family
existed (ValueError, FloatingPointError, ImportError).
"""


class Error(Exception):
  """A problem the user can fix: the message names it and says how."""


class UsageError(Error, ValueError):
  """Command-line arguments that cannot be used as given."""


class MissingPackageError(Error, ImportError):
  """An optional package this feature needs is not installed; the message says how."""


class ConfigError(Error, ValueError):
  """A config file or a config override is unusable; the message names which."""


class TrainingError(Error, ValueError):
  """A bad config value, an unusable workdir or a checkpoint that cannot be resumed."""


class DataError(Error, ValueError):
  """Bad data configuration or unusable data (missing folder, no images, corrupt file...)."""


class ShardingError(Error, ValueError):
  """A batch that cannot be split over the devices as asked."""


class CheckpointError(Error, ValueError):
  """A checkpoint is missing, unreadable or does not fit what is asked of it."""


class ConversionError(Error, ValueError):
  """Official weights do not fit the requested model."""


class ImageError(Error, ValueError):
  """An image file cannot be read or written as asked."""


class InferenceError(Error, ValueError):
  """Inference cannot be run as asked (bad options, or an image the model cannot take)."""


class EvaluationError(Error, ValueError):
  """The datasets or options cannot be evaluated as given."""


class ExportError(Error, ValueError):
  """An export cannot be done as asked."""


class ArtifactCheckError(ExportError):
  """An exported artifact failed its check against the model (removed; exit status 1)."""


class DivergedError(Error, FloatingPointError):
  """Training failed in a way the automatic rollbacks did not cure; training stopped."""


class NonFiniteLossError(DivergedError):
  """The loss or the gradient stayed NaN or infinite through config.max_rollbacks rollbacks."""


class CollapseError(DivergedError):
  """Validation PSNR kept collapsing through config.max_rollbacks rollbacks."""
