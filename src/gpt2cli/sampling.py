"""From next-token logits to a drawn token: the sampling controls, and what was drawn from.

The order is Hugging Face's (`generate`: logits processors, then warpers):
repetition penalty -> temperature -> top-k -> top-p -> draw. Temperature 0
means greedy (argmax of the penalised logits; top-k/top-p do not matter then).

What a step reports (used by `eval` to show entropy collapse): the
log-probability of the drawn token and the entropy (nats) of the model's
distribution AFTER the repetition penalty and temperature and BEFORE top-k /
top-p truncation (temperature 0 counts as 1 here). Truncation is left out on
purpose: with top-k 1 or greedy decoding the truncated distribution is a point
mass whose entropy is always 0, which would hide the model's own uncertainty.

Draws use inverse-CDF sampling with one uniform number per token, so a
sample's randomness is a fixed stream (see `generation.sample_uniforms`) that
does not depend on what else is in the batch.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019, §4.1) on tokens already in the text.

    `present` (B, V) marks them. As in CTRL's code and Hugging Face's
    RepetitionPenaltyLogitsProcessor, a positive logit is divided by the
    penalty and a negative one multiplied, so penalty > 1 always makes the
    token less likely.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """True for the k highest logits of each row (exactly k: ties broken by torch.topk)."""
    k = min(k, logits.shape[-1])
    keep = torch.zeros_like(logits, dtype=torch.bool)
    return keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)


def nucleus_keep(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """For probabilities sorted in descending order: which belong to the nucleus.

    Nucleus sampling (Holtzman et al. 2020, §3.1) keeps the smallest prefix
    whose mass reaches top_p: a token stays when the mass strictly before it
    is still below top_p. The first token always stays.
    """
    before = sorted_probs.cumsum(-1) - sorted_probs
    return before < top_p


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True for the tokens of each row's nucleus (mass of the softmax of `logits`)."""
    probs, order = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True)
    keep = torch.zeros_like(logits, dtype=torch.bool)
    return keep.scatter_(-1, order, nucleus_keep(probs, top_p))


def processed_logits(
    logits: torch.Tensor,
    temperature: float,
    repetition_penalty: float = 1.0,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits after the repetition penalty and temperature (0 counts as 1): what steps report on."""
    x = logits.float()
    if repetition_penalty != 1.0:
        if present is None:
            raise ValueError("a repetition penalty needs the `present` mask of tokens already seen")
        x = apply_repetition_penalty(x, present, repetition_penalty)
    if temperature not in (0.0, 1.0):
        x = x / temperature
    return x


def sampling_distribution(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """The exact distribution (B, V) a token is drawn from, over the whole vocabulary.

    The plain, readable version of what `Sampler` computes on a shortlist;
    tests hold the two against each other. Greedy gives a one-hot row.
    """
    x = processed_logits(logits, temperature, repetition_penalty, present)
    if temperature == 0.0:
        return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    if top_k is not None:
        x = x.masked_fill(~top_k_mask(x, top_k), float("-inf"))
    if top_p is not None:
        # top-p measures mass in the distribution that top-k left (renormalised), as HF does.
        x = x.masked_fill(~top_p_mask(x, top_p), float("-inf"))
    return torch.softmax(x, dim=-1)


def entropy_and_logprobs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) of softmax(x) per row, and the log-probabilities (B, V)."""
    logp = torch.log_softmax(x, dim=-1)
    # H = -sum p log p; p underflowing to 0 contributes 0 because log_softmax stays finite.
    return -(logp.exp() * logp).sum(-1), logp


def check_sampling_values(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
) -> None:
    """One clear line for a value outside its range, named by its command-line flag (gpt2cli.bounds)."""
    from gpt2cli.bounds import check

    check("--temperature", temperature)
    check("--top-k", top_k)
    check("--top-p", top_p)
    check("--repetition-penalty", repetition_penalty)


class Sampler:
    """Draws one token per row; built once per generation so a step only runs tensor ops.

    Sampling works on a shortlist: the top-k candidates (torch.topk, already
    sorted), or for top-p alone the whole vocabulary sorted, or for neither the
    vocabulary as it is. The draw is the inverse CDF at u * total mass, in
    float64 so 50k probabilities still add up cleanly.
    """

    def __init__(
        self,
        vocab_size: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
    ):
        check_sampling_values(temperature, top_k, top_p, repetition_penalty)
        self.temperature = temperature
        self.greedy = temperature == 0.0
        self.top_k = None if top_k is None else min(top_k, vocab_size)
        # top_p == 1 keeps everything: skip the sort.
        self.top_p = None if top_p is None or top_p >= 1.0 else top_p
        self.repetition_penalty = repetition_penalty

    @property
    def needs_uniforms(self) -> bool:
        return not self.greedy

    def __call__(
        self,
        logits: torch.Tensor,
        present: torch.Tensor | None = None,
        u: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits (B, V), present (B, V) bool, u (B,) float64 in [0, 1).

        Returns (token (B,) int64, logprob (B,), entropy (B,)), as described
        in the module docstring.
        """
        x = processed_logits(logits, self.temperature, self.repetition_penalty, present)
        entropy, logp = entropy_and_logprobs(x)
        if self.greedy:
            token = x.argmax(-1)
        else:
            if self.top_k is not None:
                values, order = x.topk(self.top_k, dim=-1)
                probs = torch.softmax(values, dim=-1)
            elif self.top_p is not None:
                probs, order = logp.exp().sort(dim=-1, descending=True)
            else:
                probs, order = logp.exp(), None
            if self.top_p is not None:
                probs = probs * nucleus_keep(probs, self.top_p)
            cdf = probs.cumsum(-1, dtype=torch.float64)
            # u < 1 in float32 steps, so target < total and the pick always has mass > 0.
            target = (u * cdf[:, -1]).unsqueeze(1)
            pick = torch.searchsorted(cdf, target, right=True)
            token = (pick if order is None else order.gather(1, pick)).squeeze(1)
        logprob = logp.gather(1, token.unsqueeze(1)).squeeze(1)
        return token, logprob, entropy
