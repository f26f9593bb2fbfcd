"""`atp serve`: an OpenAI-compatible chat server over Pipelines (see atp_cli.server.app).

    served = open_served(model_pair, workers=2)     # Pipelines loaded once
    app = create_app(served)                        # FastAPI app: /v1/chat/completions, /v1/models, /health
    uvicorn.run(app, host="127.0.0.1", port=8080)

The server keeps no state but its caches (the conversations its workers hold, the images they encoded): any
number of replicas can run behind a load balancer, each answering any request.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from atp_cli.cpu import usable_cores
from atp_cli.errors import InputError
from atp_cli.pipeline import Pipeline, PipelineConfig
from atp_cli.server.jobs import Pruning, ServeDefaults
from atp_cli.server.worker import Worker


def open_served(pair: tuple[Path, Path], model_id: str, workers: int = 1, defaults: ServeDefaults = ServeDefaults(),
                config: PipelineConfig = PipelineConfig(), queue_size: int = 8):
    """`workers` Pipelines on one model (the weights are memory-mapped once), each with its share of the cores
    unless the config sets a thread count; the server's default pruning is checked on each of them now."""
    from atp_cli.server.app import Served

    if workers < 1:
        raise ValueError("workers must be at least 1")
    context = config.context
    if not context.n_threads:
        context = replace(context, n_threads=max(1, usable_cores() // workers))
    config = replace(config, context=context, max_tokens=defaults.max_tokens)
    opened: list[Worker] = []
    try:
        for _ in range(workers):
            worker = Worker(Pipeline(*pair, "none", config))
            opened.append(worker)
            worker.install(defaults.pruning)
        defaults = replace(defaults, low_detail=low_detail_pruning(opened[0].pipe, defaults.low_detail_budget))
    except BaseException:
        for w in opened:
            w.pipe.close()
        raise
    return Served(model_id=model_id, workers=opened, defaults=defaults, queue_size=queue_size)


def low_detail_pruning(pipe: Pipeline, budget: float) -> Pruning:
    """What an image part with detail "low" gets: atp's own operating point at `budget` when the model stores one,
    else CDPruner's selection of that many tokens before the language model (it meets any budget exactly)."""
    if not 1 <= budget <= pipe.n_visual:
        raise InputError(f"the low-detail budget {budget:g} is outside 1..{pipe.n_visual} (the model's visual tokens)")
    w = pipe.weights
    if w is not None and w.mlps and any(abs(b - budget) <= 0.5 for b in w.budgets):
        return Pruning("atp", budget)
    return Pruning("cdpruner", budget)


def close_served(served) -> None:
    for w in served.workers:
        w.pipe.close()
