"""User-facing errors. Each one names the problem and what to do; entry points turn
them into a one-line message and exit code 2 instead of a traceback."""


class ChainpressError(Exception):
    """Base class for errors caused by the user's input or environment."""


class DataError(ChainpressError):
    """A task's data file is missing, empty or malformed."""


class SpecError(ChainpressError):
    """A configuration or chain spec is invalid."""


class ModelError(ChainpressError):
    """A model path cannot be loaded or the model is not supported."""


class TrainingError(ChainpressError):
    """Training diverged (NaN/inf loss) or could not run."""


class ExportValidationError(ChainpressError):
    """An exported model does not reproduce the source model within tolerance."""


class SpecErrors(SpecError):
    """Several problems in one spec, reported together (``chain validate`` lists them all)."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__(self.errors[0] if len(self.errors) == 1 else
                         f"{len(self.errors)} problems:\n" + "\n".join(f"  - {e}" for e in self.errors))


def many(errors: list[str], cls: type = SpecError) -> ChainpressError:
    """One exception for several problems: ``cls`` when all of them are of that kind (a data
    error stays a ``DataError``), else ``SpecErrors``; ``.errors`` lists them."""
    if cls is SpecError or len(errors) == 1:
        e = SpecErrors(errors) if cls is SpecError else cls(errors[0])
    else:
        e = cls(f"{len(errors)} problems:\n" + "\n".join(f"  - {x}" for x in errors))
    e.errors = list(errors)
    return e
