"""Every error sluice raises on purpose, in one tree, and the one way a command ends on them.

    SluiceError                      the root; ``retriable``: may the same work succeed later?
    ├── OperatorError                the operator fixes it, as the message says: a command ends
    │   │                            with one line, ``sluice <command>: <message>``, exit status 2
    │   ├── ConfigError              the config file: missing, not TOML, a key that is wrong
    │   ├── BrokerUnreachableError   no broker answered, or it refused the credentials
    │   ├── TopicMissingError        a topic to read or write does not exist (and may not be created)
    │   ├── ModelLoadError           a model cannot be loaded (also a ModelError, below)
    │   ├── CommandLineError         a flag of backfill, watch or swap-model, or what it names
    │   ├── CheckpointError          a backfill run id or checkpoint file that is not what a run wrote
    │   ├── FileSinkError            a file target the sink cannot write, or a stale resume state
    │   ├── StateError               a state changelog sluice cannot restore (another features config)
    │   └── SwapRejected             a model-swap request the worker refuses (``status``: its HTTP answer)
    ├── ModelError                   a model could not be loaded or could not score a batch
    │   ├── ModelLoadError           (above)
    │   ├── ModelOutputError         the model's output is not one real number (or row of them) per input
    │   │   └── PredictionCountError another number of predictions than inputs
    │   └── ModelUnavailableError    retriable: the model fails on inputs it scored before
    │       └── ModelTimeout         retriable: the model did not answer within its inference timeout
    ├── OutputRefused                the destination refused outputs for good: they become dead letters
    ├── DeliveryFailed               retriable: outputs were not acknowledged (the broker is away);
    │                                the driver sends them again, and commits nothing past them
    ├── TransactionFailed            exactly-once: a transaction cannot be committed; the worker stops and
    │   │                            its open transactions are aborted (a restart scores their events again)
    │   └── Fenced                   another worker took this one's partitions (it was paused or cut off)
    └── PartitionOutOfOrder          a partition asked to move out of its life's order (a bug, never input)

``retriable`` is read where a caller chooses (as aiokafka's ``KafkaError.retriable``): a
runner raising a retriable ``ModelError`` is not the inputs' fault, so the isolating scorer
re-raises it instead of bisecting the batch into dead letters; the driver then retries the
batch with back-off (any other error stops it), and a backfill exits with status 1 to be
continued with ``--resume``. Everything else is ``retriable = False``: an operator error
fails the same way until someone fixes it, and a refused output is dead-lettered. A custom
runner marks a transient failure (a busy device) by raising a subclass of ``ModelError``
with ``retriable = True``.

Where the tree lives: this module imports nothing from the project at run time (the one
import under ``TYPE_CHECKING`` only names the record type ``OutputRefused`` carries), so
every room may import it. ``streams`` is the engine's home and most of the tree is the
engine's; ``models`` (otherwise torch and numpy only) imports its ``ModelError`` family from
here, which adds no dependency, and ``app`` its operator errors and the exit path.

Raise operator errors before a command starts a Kafka consumer where possible, and stop
consumers with ``streams.kafka.replay.stop_consumer``: aiokafka's ``CancelledError`` from stopping a
consumer that had just started once replaced such an error in a ``finally``, and Faust ends a
cancelled command with status 0 and nothing said.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.records import OutputRecord

OPERATOR_EXIT_STATUS = 2


class SluiceError(Exception):
    """The root of every error sluice raises on purpose."""

    retriable: bool = False


class OperatorError(SluiceError):
    """A mistake the operator can fix (config, broker address, credentials, topics, model
    files, flags); the message says what, in one line where possible."""


class ConfigError(OperatorError):
    """The config file is missing or wrong; the message says where and how to fix it."""


class BrokerUnreachableError(OperatorError):
    """No broker answered at the configured address, or it refused the credentials."""


class TopicMissingError(OperatorError):
    """A topic to read or write does not exist and sluice may not create it."""


class CommandLineError(OperatorError):
    """A command's flag (or the environment, file or run it names) is wrong; the message names it."""


class CheckpointError(OperatorError):
    """A run id that is not a plain name, or a checkpoint file that is not what a run wrote."""


class FileSinkError(OperatorError):
    """A file target the sink cannot write, or a resume state that no longer matches the files."""


class StateError(OperatorError):
    """Per-key state cannot be restored: its changelog was written under another features config."""


class SwapRejected(OperatorError):
    """A model-swap request that is not allowed or not well formed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelError(SluiceError):
    """A model could not be loaded or could not score a batch.

    ``retriable`` tells the pipeline whether trying the same batch again may succeed
    (a transient device error) or whether the inputs themselves are at fault.
    """


class ModelLoadError(OperatorError, ModelError):
    """The model named in the config cannot be loaded: missing file, wrong class, bad weights."""


class ModelOutputError(ModelError):
    """The model returned something other than one tensor of real numbers, one row per input
    row (a tuple, a dict, complex numbers, a tensor of three or more dimensions)."""


class PredictionCountError(ModelOutputError):
    """The model returned a different number of predictions than it was given inputs."""


class ModelUnavailableError(ModelError):
    """The model fails on inputs it scored before: retry later, never dead-letter the batch."""

    retriable = True


class ModelTimeout(ModelUnavailableError):
    """The model did not answer a batch within its inference timeout (a stuck device, a deadlock):
    no input is at fault, so no bisection; the circuit breaker counts it as a failure."""


class OutputRefused(SluiceError):
    """The destination refused these records for good (too large, invalid), each with its reason.

    Retrying them would fail forever; the pipeline replaces each with a minimal dead letter.
    """

    def __init__(self, refused: Sequence[tuple[OutputRecord, str]]) -> None:
        super().__init__(f"{len(refused)} output(s) refused, e.g. {refused[0][1] if refused else ''}")
        self.refused = list(refused)


class DeliveryFailed(SluiceError):
    """A sink could not deliver outputs this time (the broker is unreachable, a request timed
    out): sending the same outputs again may succeed. The sink's own error is the cause."""

    retriable = True


class RegistryUnavailable(SluiceError):
    """The schema registry could not say what a schema id is (unreachable, slow, its own error):
    not the events' fault, so they wait and are asked about again, never dead-lettered."""

    retriable = True


class TransactionFailed(SluiceError):
    """Exactly-once delivery: an output or a commit failed inside a Kafka transaction. Sending
    again would risk a duplicate inside the same transaction, so nothing is retried: the driver
    stops, the transaction is aborted (by this worker, or by the next owner of its partitions),
    and its events are scored again from the last committed transaction."""


class Fenced(TransactionFailed):
    """The broker refused this worker's transaction: a newer producer with the same transactional
    id (the partition's new owner) exists. This worker is a zombie and must commit nothing more."""


@contextmanager
def exit_on_operator_error(command: str | None) -> Iterator[None]:
    """The one exit path: an ``OperatorError`` ends ``command`` with one line on stderr,
    ``sluice <command>: <message>``, and exit status 2, never a traceback."""
    try:
        yield
    except OperatorError as exc:
        prefix = f"sluice {command}" if command else "sluice"
        print(f"{prefix}: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        raise SystemExit(OPERATOR_EXIT_STATUS) from None


class PartitionOutOfOrder(SluiceError):
    """A partition asked to move out of its life's order (``streams.flow.partitions``): a bug in
    sluice, raised at once instead of corrupting the partition's state or offsets."""
