"""`leader predict`: a run of any kind → streamed, batched inference → ranked drugs per patient.

One module per job:

    input.py      reading and checking the input (`read_input`; the contract is `leadercli.data.contract`)
    streaming.py  chunks of whole subjects, encoding in a background thread, scoring threads, results in order
    ranking.py    the output rows: top-k, threshold, DDI cap (`leadercli.selection`), counts, `PredictOptions`
    output.py     output checks before any work, the writer, the `<output>.meta.json` sidecar
    command.py    `predict_file`: the command from input to summary

The Python API (`leadercli.api.Recommender`) calls `predict_frame`, the same encoding and scoring as the file
path.
"""

from leadercli.data.contract import CODES as INPUT_CODES
from leadercli.data.contract import KIND as INPUT_MANIFEST_KIND
from leadercli.data.contract import VISITS as INPUT_VISITS
from leadercli.predict.command import PredictSummary, default_model, predict_file
from leadercli.predict.input import PredictInput, read_input, read_titles
from leadercli.predict.output import check_output, estimate_output_bytes
from leadercli.predict.ranking import OUT_SCHEMA, Counts, PredictOptions
from leadercli.predict.streaming import predict_frame, predict_stream

__all__ = [
    "INPUT_CODES",
    "INPUT_MANIFEST_KIND",
    "INPUT_VISITS",
    "OUT_SCHEMA",
    "Counts",
    "PredictInput",
    "PredictOptions",
    "PredictSummary",
    "check_output",
    "default_model",
    "estimate_output_bytes",
    "predict_file",
    "predict_frame",
    "predict_stream",
    "read_input",
    "read_titles",
]
