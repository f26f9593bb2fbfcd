"""Every GGUF key and tensor name the project writes or reads, in one place (pure data)."""

from __future__ import annotations


class Atp:
    """ATP configuration and weights, stored in the mmproj GGUF (llama.cpp's mmproj loader ignores them)."""

    FORMAT_VERSION = "atp.format_version"
    N_LAYER = "atp.n_layer"  # decoder depth the weights were made for
    BOUNDARIES = "atp.boundaries"  # first layer without the dropped tokens, per module
    SAP_STRIDES = "atp.sap.strides"
    SAP_LAMBDA = "atp.sap.lambda"
    TEMPERATURE = "atp.temperature"
    GRID = "atp.grid"  # [H, W] of the visual tokens
    MLP_HIDDEN = "atp.mlp.hidden"
    MLP_FEATURES = "atp.mlp.n_features"
    HAS_MLP = "atp.mlp.present"
    FREE_MASS = "atp.free.mass"  # training-free: attention mass kept per module
    FREE_STRIDE = "atp.free.stride"  # training-free: SAP stride per module
    DEBIAS = "atp.scores.debias"  # true: relevance without the attention's distance trend
    OP_BUDGETS = "atp.operating_points.budget"  # named budgets (average visual tokens) selectable at run time
    OP_PRE_KEEP = "atp.operating_points.pre_keep"  # per budget: rows kept before the LLM (all: the modules alone)

    @staticmethod
    def mlp_tensor(module: int, part: str) -> str:
        """part: fc1.weight, fc1.bias, fc2.weight, fc2.bias."""
        return f"atp.m{module}.{part}"


ATP_FORMAT_VERSION = 1
