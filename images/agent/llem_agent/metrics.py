"""Pure maths over what one run observed: latency distributions and throughput."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llem_agent.contract import (
    Distribution,
    Latency,
    PrefixCacheReport,
    RequestRecord,
    Throughput,
    ValidityFlag,
)


@dataclass(frozen=True)
class BatchObservation:
    """What one generate call produced, per request; token times are since batch start."""

    input_tokens: list[int]
    output_tokens: list[int]
    token_times_s: list[list[float]]
    # False: each request's times are only [first token, last token] (the engine exposes no more).
    complete: bool = True
    # Set where the engine returned no token times for some requests (no request metrics, or
    # beam search, which times no token): those have no token times ([]), no TTFT, and end when
    # the generate call returned (seconds since batch start).
    untimed_end_s: float | None = None
    # Why those requests are untimed, said in the result (default: no request metrics).
    untimed_reason: str | None = None
    # Prompt tokens each request was served from a prefix / KV-block cache (None: not reported).
    cached_tokens: list[int | None] | None = None
    # The batch's requests were all prefilled before its first token (static batching); False
    # where the engine schedules continuously and prefills interleave with decode steps.
    static: bool = True


NO_REQUEST_METRICS = "the engine returned no request metrics for them"
BEAM_SEARCH_UNTIMED = "beam search reports no per-token times (only when the batch returned)"


def distribution(values: Sequence[float]) -> Distribution:
    """Mean, p50/p90/p99 (linear interpolation), min and max of ``values``."""
    if len(values) == 0:
        return Distribution(n=0, mean=None, p50=None, p90=None, p99=None, min=None, max=None)
    arr = np.asarray(values, dtype=float)
    p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
    return Distribution(
        n=int(arr.size),
        mean=float(arr.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        min=float(arr.min()),
        max=float(arr.max()),
    )


def request_records(batches: Sequence[BatchObservation]) -> list[RequestRecord]:
    """Flatten batches into one record per request.

    TTFT is the time of a request's first generated token; its end-to-end latency is the
    time of its last generated token (a request with no output token ends at 0).
    """
    records: list[RequestRecord] = []
    for batch in batches:
        cached = batch.cached_tokens if batch.cached_tokens is not None else [None] * len(batch.input_tokens)
        rows = zip(batch.input_tokens, batch.output_tokens, batch.token_times_s, cached, strict=True)
        for inp, out, times, hit in rows:
            untimed = not times and out > 0 and batch.untimed_end_s is not None
            expected = out if batch.complete else min(out, 2)
            if len(times) != expected and not untimed:
                raise ValueError(f"request has {out} output tokens but {len(times)} token times")
            end = batch.untimed_end_s if untimed and batch.untimed_end_s is not None else (times[-1] if times else 0.0)
            records.append(
                RequestRecord(
                    index=len(records),
                    input_tokens=inp,
                    output_tokens=out,
                    ttft_s=times[0] if times else None,
                    e2e_latency_s=end,
                    token_times_s=[round(t, 6) for t in times],
                    token_times_complete=batch.complete and not untimed,
                    cached_prompt_tokens=hit,
                )
            )
    return records


def untimed_reasons(batches: Sequence[BatchObservation]) -> list[str]:
    """Why requests of these batches have no token times, each reason once, in order seen."""
    reasons: list[str] = []
    for batch in batches:
        reason = batch.untimed_reason or NO_REQUEST_METRICS
        untimed = any(not t and n > 0 for t, n in zip(batch.token_times_s, batch.output_tokens, strict=True))
        if untimed and batch.untimed_end_s is not None and reason not in reasons:
            reasons.append(reason)
    return reasons


def latency(records: Sequence[RequestRecord], reasons: Sequence[str] = ()) -> Latency:
    """Distributions of TTFT, inter-token latency (gaps between consecutive tokens) and e2e.

    ``reasons``: why some requests are untimed (:func:`untimed_reasons`); default, no request
    metrics. An untimed request adds nothing to TTFT or inter-token latency: never a made-up
    value (a batch-end stamp would make TTFT equal e2e and every gap 0)."""
    itl: list[float] = []
    kinds = set()
    for rec in records:
        if rec.token_times_complete:
            itl.extend(float(b - a) for a, b in itertools.pairwise(rec.token_times_s))
            kinds.add("token_gaps")
        elif rec.output_tokens > 1 and len(rec.token_times_s) == 2:
            itl.append((rec.token_times_s[-1] - rec.token_times_s[0]) / (rec.output_tokens - 1))
            kinds.add("request_means")
    source = "mixed" if len(kinds) > 1 else kinds.pop() if kinds else "token_gaps"
    untimed = sum(1 for r in records if r.output_tokens > 0 and r.ttft_s is None)
    return Latency(
        ttft_s=distribution([r.ttft_s for r in records if r.ttft_s is not None]),
        inter_token_s=distribution(itl),
        e2e_s=distribution([r.e2e_latency_s for r in records]),
        inter_token_source=source,  # type: ignore[arg-type]
        ttft_missing_reason=None
        if not untimed
        else f"{untimed} of {len(records)} requests have no token times ({'; '.join(reasons or [NO_REQUEST_METRICS])})"
        ": their TTFT and inter-token latency are missing, and their end-to-end latency is when the generate call "
        "returned",
    )


def throughput(records: Sequence[RequestRecord], window_s: float) -> Throughput:
    """Tokens and requests per second over the measured window."""
    if window_s <= 0:
        raise ValueError(f"measured window must be positive, got {window_s}")
    out = sum(r.output_tokens for r in records)
    total = out + sum(r.input_tokens for r in records)
    return Throughput(
        output_tokens_per_s=out / window_s,
        total_tokens_per_s=total / window_s,
        requests_per_s=len(records) / window_s,
    )


def prefix_cache_report(
    records: Sequence[RequestRecord],
    *,
    warm: bool,
    warmup_prompts: str | None,
    engine_cache: bool | None,
    reset: bool | None,
) -> PrefixCacheReport:
    """How much of the measured requests' prompts a prefix cache served (None where unreported)."""
    reported = [r.cached_prompt_tokens for r in records if r.cached_prompt_tokens is not None]
    known = len(reported) == len(records) and bool(records)
    return PrefixCacheReport(
        mode="warm" if warm else "cold",
        warmup_prompts=warmup_prompts,  # type: ignore[arg-type]
        engine_cache=engine_cache,
        reset_after_warmup=reset,
        prompt_tokens=sum(r.input_tokens for r in records),
        cached_prompt_tokens=sum(reported) if known else None,
        requests_with_cached_tokens=sum(1 for n in reported if n > 0) if known else None,
    )


def prefix_cache_flags(report: PrefixCacheReport, n_requests: int) -> list[ValidityFlag]:
    """``prefix_cache_hit`` when a cold window was served from a cache anyway (a dataset whose
    prompts share a prefix, or an engine that could not be emptied); ``prefix_cache_warm``
    labels a warm cache asked for on purpose. Either way the prefill was not all computed."""
    hits = report.cached_prompt_tokens
    if report.mode == "warm":
        seen = f"{hits} of {report.prompt_tokens} prompt tokens" if hits is not None else "an unreported share"
        return [
            ValidityFlag(
                code="prefix_cache_warm",
                message=f"warm prefix cache on purpose (warmup.prefix_cache: warm): {seen} served from the cache",
            )
        ]
    if not hits:
        return []
    return [
        ValidityFlag(
            code="prefix_cache_hit",
            message=f"{report.requests_with_cached_tokens} of {n_requests} measured requests were served {hits} of "
            f"{report.prompt_tokens} prompt tokens from the prefix cache: their prefill was not computed",
        )
    ]
