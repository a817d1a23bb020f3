"""Turns one step's logits into one token per sequence, with vLLM v1's semantics.

Order: logit_bias -> min_tokens (mask stop ids) -> repetition, frequency, presence penalties
-> greedy argmax, or temperature -> min_p -> top-k -> top-p -> Gumbel-style sampling.
Logprobs always come from the RAW logits (log_softmax in float32), as vLLM v1 reports them.

Everything is batched across rows; a row's result never depends on the other rows in the
batch, so a seeded request draws the same tokens alone or inside any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from vllm_cli.kernels import cpu as cpu_kernels
from vllm_cli.outputs import Logprob, PositionLogprobs
from vllm_cli.sampling_params import SamplingParams

__all__ = ["SamplingRow", "SampleResult", "Sampler", "make_generator", "compute_prompt_logprobs"]

_NEG_INF = float("-inf")


@dataclass
class SamplingRow:
    """One row of the logits tensor: one sequence to sample a token for."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]  # a list or a 1-D long tensor
    output_token_ids: Sequence[int]  # tokens this sequence generated before this step
    generator: torch.Generator | None = None  # per-request when params.seed is set, else global RNG


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None  # raw-distribution logprob of token_id; None unless params.logprobs is set
    # token_id and the top params.logprobs tokens, in rank order (token_id last when outside the top-k).
    top_logprobs: PositionLogprobs | None


def make_generator(seed: int) -> torch.Generator:
    """CPU generator for a seeded request (seeds wrap to 64 bits, so negative seeds work)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        self.vocab_size = int(vocab_size)
        self.eos_token_ids = tuple(sorted({int(t) for t in eos_token_ids}))

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[SampleResult]:
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, V], got {tuple(logits.shape)}")
        if not rows:
            return []
        # Padded vocabularies: columns past the real vocabulary are never sampled nor reported.
        vocab = min(self.vocab_size, logits.shape[1])
        raw = logits[:, :vocab]
        dev = raw.device
        params = [r.params for r in rows]

        x = self._process_logits(raw, rows)
        greedy = [i for i, p in enumerate(params) if p.greedy]
        random = [i for i, p in enumerate(params) if not p.greedy]
        if not random:
            tokens = _argmax(x)
        elif not greedy:
            tokens = _sample_random(x, rows)
        else:
            tokens = torch.empty(len(rows), dtype=torch.long, device=dev)
            gi = torch.tensor(greedy, device=dev)
            ri = torch.tensor(random, device=dev)
            tokens[gi] = _argmax(x[gi])
            tokens[ri] = _sample_random(x[ri], [rows[i] for i in random])

        results = [SampleResult(t, None, None) for t in tokens.tolist()]
        lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        if lp_rows:
            all_rows = len(lp_rows) == len(rows)
            li = None if all_rows else torch.tensor(lp_rows, device=dev)
            lps = torch.log_softmax((raw if all_rows else raw[li]).float(), dim=-1)
            picked = tokens if all_rows else tokens[li]
            per_row = _position_logprobs(lps, picked, [params[i].logprobs or 0 for i in lp_rows])
            for i, d in zip(lp_rows, per_row):
                results[i].logprob = d[results[i].token_id].logprob
                results[i].top_logprobs = d
        return results

    def _process_logits(self, raw: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """logit_bias, min_tokens and penalties; returns `raw` itself when no row needs any."""
        vocab = raw.shape[1]
        bias_r: list[int] = []
        bias_t: list[int] = []
        bias_v: list[float] = []
        mask_r: list[int] = []
        mask_t: list[int] = []
        rep: list[int] = []
        freq_pres: list[int] = []
        for i, r in enumerate(rows):
            p = r.params
            if p.logit_bias:
                for t, b in p.logit_bias.items():
                    if 0 <= t < vocab:  # out-of-range ids are ignored, as OpenAI's API does
                        bias_r.append(i)
                        bias_t.append(t)
                        bias_v.append(b)
            if p.min_tokens and len(r.output_token_ids) < p.min_tokens:
                # vLLM masks all stop token ids: stop_token_ids always, EOS unless it is ignored.
                stop_ids = set(p.stop_token_ids or ())
                if not p.ignore_eos:
                    stop_ids.update(self.eos_token_ids)
                for t in stop_ids:
                    if 0 <= t < vocab:
                        mask_r.append(i)
                        mask_t.append(t)
            if p.repetition_penalty != 1.0:
                rep.append(i)
            if p.frequency_penalty or p.presence_penalty:
                freq_pres.append(i)
        if not (bias_r or mask_r or rep or freq_pres):
            return raw

        dev = raw.device
        x = raw.to(torch.float32, copy=True)
        if bias_r:
            x.index_put_(
                (torch.tensor(bias_r, device=dev), torch.tensor(bias_t, device=dev)),
                torch.tensor(bias_v, dtype=torch.float32, device=dev),
                accumulate=True,
            )
        if mask_r:
            x[torch.tensor(mask_r, device=dev), torch.tensor(mask_t, device=dev)] = _NEG_INF
        # Penalties touch only (row, token) pairs that occurred: sparse updates, no [rows, V] temporaries.
        if rep:
            seqs = [[rows[i].prompt_token_ids, rows[i].output_token_ids] for i in rep]
            occ_r, occ_t, _ = _occurrences(seqs, vocab, dev)
            r_glob = torch.tensor(rep, device=dev)[occ_r]
            pen = torch.tensor([rows[i].params.repetition_penalty for i in rep], device=dev)[occ_r]
            v = x[r_glob, occ_t]
            x[r_glob, occ_t] = torch.where(v > 0, v / pen, v * pen)
        if freq_pres:
            occ_r, occ_t, occ_c = _occurrences([[rows[i].output_token_ids] for i in freq_pres], vocab, dev)
            r_glob = torch.tensor(freq_pres, device=dev)[occ_r]
            freq = torch.tensor([rows[i].params.frequency_penalty for i in freq_pres], device=dev)[occ_r]
            pres = torch.tensor([rows[i].params.presence_penalty for i in freq_pres], device=dev)[occ_r]
            x[r_glob, occ_t] -= freq * occ_c + pres
        return x


def _occurrences(
    seqs_per_row: list[list[Sequence[int]]], vocab: int, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (row, token) pairs in each row's sequences, with counts; ids outside the vocab dropped."""
    ids: list[torch.Tensor] = []
    lens: list[int] = []
    for seqs in seqs_per_row:
        n = 0
        for seq in seqs:
            if len(seq):
                ids.append(torch.as_tensor(seq, dtype=torch.long).to(dev))
                n += len(seq)
        lens.append(n)
    if not ids:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, empty, empty.float()
    toks = torch.cat(ids)
    row = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))
    ok = (toks >= 0) & (toks < vocab)
    keys, counts = torch.unique(row[ok] * vocab + toks[ok], return_counts=True)
    return keys // vocab, keys % vocab, counts.float()


def _sample_random(x: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """temperature -> min_p -> top-k -> top-p -> argmax(probs / Exponential(1) noise), per row."""
    m, vocab = x.shape
    dev = x.device
    params = [r.params for r in rows]
    temp = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
    x = x.float().div(temp[:, None])  # a fresh tensor we may edit in place

    if any(p.min_p > 0 for p in params):
        # prob < min_p * max_prob  <=>  logit < max_logit + log(min_p); log(0) = -inf masks nothing.
        log_min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev).log()
        x.masked_fill_(x < x.amax(-1, keepdim=True) + log_min_p[:, None], _NEG_INF)

    top_k = [j for j, p in enumerate(params) if 0 < p.top_k < vocab]
    if top_k:
        k = torch.tensor([params[j].top_k for j in top_k], device=dev)
        _on_rows(x, top_k, lambda sub: _top_k(sub, k))

    probs = x.softmax(-1)
    top_p = [j for j, p in enumerate(params) if p.top_p < 1.0]
    if top_p:
        p_t = torch.tensor([params[j].top_p for j in top_p], dtype=torch.float32, device=dev)
        _on_rows(probs, top_p, lambda sub: _top_p(sub, p_t))

    # Exponential(1) noise as -log(U): same law as exponential_(), several times faster on CPU.
    # U < 1 so the noise is > 0, and U == 0 gives +inf (that token's key is 0): never NaN.
    noise = torch.empty_like(probs)
    seeded = [j for j, r in enumerate(rows) if r.generator is not None]
    if len(seeded) < m:
        if not seeded:
            noise.uniform_()
        else:
            unseeded = torch.tensor([j for j in range(m) if rows[j].generator is None], device=dev)
            noise[unseeded] = torch.rand(len(unseeded), vocab, device=dev)
    for j in seeded:
        # One row at a time from the request's own generator: the draw is independent of the batch.
        g = rows[j].generator
        assert g is not None
        if g.device == dev:
            noise[j].uniform_(generator=g)
        else:
            noise[j] = torch.rand(vocab, generator=g, device=g.device)
    return _argmax(probs.div_(noise.log_().neg_()))


def _argmax(x: torch.Tensor) -> torch.Tensor:
    # On the CPU a C kernel where it can take x (kernels/cpu.py, same rule: first index of the
    # largest value, or of the first NaN); else max(dim).indices: same rule as argmax, about 2x
    # faster on CPU.
    if (
        x.dtype == torch.float32
        and x.dim() == 2
        and x.is_cpu
        and x.shape[1] > 0
        and x.stride(1) == 1
        and cpu_kernels.load() is not None
    ):
        return cpu_kernels.argmax_rows(x)
    return x.max(dim=-1).indices


def _on_rows(t: torch.Tensor, idx: list[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply fn (which may work in place on its argument) to rows idx of t, in place."""
    if len(idx) == t.shape[0]:
        fn(t)
    else:
        i = torch.tensor(idx, device=t.device)
        t[i] = fn(t[i])


def _top_k(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep logits >= each row's k-th largest (ties at the boundary are kept, like vLLM)."""
    kth = x.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
    return x.masked_fill_(x < kth, _NEG_INF)


# Top-p looks for its nucleus among the most likely tokens first, widening the search per
# round only for rows whose nucleus is larger: a topk of a few hundred is ~25x cheaper than
# sorting a 50k-token row, and real nuclei are usually far smaller.
_TOP_P_CANDIDATES = 256
_TOP_P_GROWTH = 16  # 256 -> 4096 -> full sort


def _top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero tokens outside the smallest set whose cumulative prob reaches top_p (top token always kept)."""
    vocab = probs.shape[1]
    thr = torch.full_like(top_p, float("nan"))
    todo = torch.ones_like(top_p, dtype=torch.bool)
    k = _TOP_P_CANDIDATES
    first = True
    while True:
        k = min(k, vocab)
        sub = probs if first else probs[todo]
        first = False
        desc = sub.sort(dim=-1, descending=True).values if k == vocab else sub.topk(k, dim=-1).values
        # The cumsum is a prefix sum, so a row gets the same threshold whatever k found it.
        thr[todo] = _nucleus_threshold(desc, top_p[todo], complete=k == vocab)
        todo = thr.isnan()
        if k == vocab or not bool(todo.any()):
            break
        k *= _TOP_P_GROWTH
    return probs.masked_fill_(probs < thr[:, None], 0.0)


def _nucleus_threshold(desc: torch.Tensor, top_p: torch.Tensor, complete: bool = False) -> torch.Tensor:
    """Smallest kept prob per row from descending probs; NaN where the nucleus may extend past them."""
    cum = desc.cumsum(-1)
    # Kept prefix: tokens whose predecessors sum below top_p. Zero-prob tokens (cut by top-k/min_p)
    # are never kept, so a nucleus that ends on them is complete even when round-off keeps the
    # cumsum just under top_p.
    keep = ((cum - desc < top_p[:, None]) & (desc > 0)).sum(-1)
    thr = desc.gather(1, (keep - 1).clamp_(min=0)[:, None])[:, 0]
    if not complete:
        thr = thr.masked_fill(keep == desc.shape[1], float("nan"))
    return thr


def _position_logprobs(lps: torch.Tensor, token_ids: torch.Tensor, ks: list[int]) -> list[PositionLogprobs]:
    """Per row of log-probs: the given token plus the top ks[row], ranked 1 + #strictly greater."""
    tok_lp = lps.gather(1, token_ids[:, None])
    tok_rank = (lps > tok_lp).sum(-1, dtype=torch.int32) + 1  # int32: 3x faster than bool -> int64
    kmax = min(max(ks, default=0), lps.shape[1])
    if kmax:
        top_lp, top_ids = lps.topk(kmax, dim=-1)
        # Ranks inside the top-k: any strictly greater value is itself in the top-k.
        top_rank = (top_lp[:, None, :] > top_lp[:, :, None]).sum(-1) + 1
        top_lp_l, top_ids_l, top_rank_l = top_lp.tolist(), top_ids.tolist(), top_rank.tolist()
    out: list[PositionLogprobs] = []
    for r, (t, lp, rank) in enumerate(zip(token_ids.tolist(), tok_lp[:, 0].tolist(), tok_rank.tolist())):
        d: PositionLogprobs = {}
        for j in range(min(ks[r], kmax)):
            d[top_ids_l[r][j]] = Logprob(top_lp_l[r][j], top_rank_l[r][j])
        if t not in d:
            d[t] = Logprob(lp, rank)
        out.append(d)
    return out


@torch.inference_mode()
def compute_prompt_logprobs(
    logits: torch.Tensor,
    target_token_ids: Sequence[int],
    num_logprobs: int,
    vocab_size: int | None = None,
) -> list[PositionLogprobs]:
    """logits[i] predicts target_token_ids[i]: each position's actual token plus its top num_logprobs.

    Pass vocab_size for padded vocabularies so the padding columns take no probability mass.
    """
    if logits.dim() != 2 or logits.shape[0] != len(target_token_ids):
        raise ValueError(f"logits must be [{len(target_token_ids)}, V], got {tuple(logits.shape)}")
    if vocab_size is not None:
        logits = logits[:, :vocab_size]
    if not len(target_token_ids):
        return []
    lps = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.as_tensor(target_token_ids, dtype=torch.long).to(lps.device)
    return _position_logprobs(lps, targets, [num_logprobs] * len(targets))
