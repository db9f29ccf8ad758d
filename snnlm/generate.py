"""`python -m snnlm.generate`: write text with GPT-2 or its spiking version, streaming tokens as they are produced."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Iterator

import numpy as np

from snnlm.errors import ArgumentParser, SnnlmError, cli_main
from snnlm.gpt2 import ANNDecoder
from snnlm.sampling import next_token
from snnlm.snn import SNNDecoder, SpikingGPT2, convert, load_snn
from snnlm.tokenizer import tokenizer_for_weights
from snnlm.weights import DEFAULT_WEIGHTS_DIR, GPT2Model, load_gpt2


def generate_ids(decoder, prompt_ids: list[int], max_new_tokens: int, eot_id: int, n_ctx: int,
                 rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids, stopping at `eot_id` or at the context window.

    `decoder.feed(ids) -> logits (n_vocab,)` extends its context by `ids`.
    """
    logits = decoder.feed(prompt_ids)
    for i in range(max_new_tokens):
        token = next_token(logits, rng, temperature, top_k, top_p)
        if token == eot_id:
            return
        yield token
        if len(prompt_ids) + i + 1 >= n_ctx:
            return
        logits = decoder.feed([token])


DEFAULT_TIMESTEPS = 4


def make_decoder(model: GPT2Model | SpikingGPT2) -> ANNDecoder | SNNDecoder:
    """The incremental decoder of a GPT-2 (KV cache) or of a spiking GPT-2 (recurrent SSA state)."""
    if isinstance(model, SpikingGPT2):
        return SNNDecoder(model)
    return ANNDecoder(model.params, model.config)


def generate(model: GPT2Model | SpikingGPT2, tokenizer, prompt: str = "", max_new_tokens: int = 50,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0, seed: int | None = None) -> str:
    """The text that `model` (a GPT-2 or, from `snnlm.snn.convert`, a spiking one) writes after `prompt`
    (the Python API of `snnlm.generate`)."""
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    ids = generate_ids(make_decoder(model), prompt_ids, max_new_tokens, tokenizer.eot_id,
                       model.config.n_ctx, np.random.default_rng(seed), temperature, top_k, top_p)
    return tokenizer.decode(list(ids))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m snnlm.generate",
        description="Generate text with GPT-2. ANN mode runs the ordinary transformer, with a KV cache; "
                    "SNN mode runs its spiking version (loaded from --snn, or converted from --weights on the fly), "
                    "with the recurrent state of the spiking attention instead of a KV cache. "
                    "Tokens are printed as they are produced.",
    )
    parser.add_argument("prompt", nargs="?", default=None,
                        help="text to continue; read from standard input when omitted and input is piped; "
                             "an empty prompt starts from <|endoftext|>")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_DIR),
                        help="directory with model.safetensors, config.json and the tokenizer files "
                             "(default: the embedded model in %(default)s)")
    parser.add_argument("--mode", choices=["ann", "snn"], default=None,
                        help="which network runs: the ANN, or the spiking network (default: snn with --snn, else ann)")
    parser.add_argument("--snn", metavar="CKPT", default=None,
                        help="spiking checkpoint to run (a .safetensors file written by snnlm.snn.save_snn); "
                             "without it, --mode snn converts the --weights model first")
    parser.add_argument("--timesteps", type=int, default=None, metavar="T",
                        help=f"timesteps per token of the spiking network (default: {DEFAULT_TIMESTEPS}, "
                             "or the checkpoint's T with --snn)")
    parser.add_argument("--max-new-tokens", type=int, default=60, help="tokens to generate at most (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature; 0 means greedy, deterministic (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens; 0 = all (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the tokens holding this much probability (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text (default: random)")
    parser.add_argument("--crop", action="store_true",
                        help="keep the end of a prompt longer than the context window instead of refusing it")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0:
        parser.error("--max-new-tokens must be >= 0")
    if args.temperature < 0:
        parser.error("--temperature must be >= 0")
    if args.top_k < 0:
        parser.error("--top-k must be >= 0")
    if not 0 < args.top_p <= 1:
        parser.error("--top-p must be in (0, 1]")
    if args.mode is None:
        args.mode = "snn" if args.snn is not None else "ann"
    if args.mode == "ann" and (args.snn is not None or args.timesteps is not None):
        parser.error("--snn and --timesteps apply to --mode snn")
    if args.timesteps is not None and args.timesteps < 1:
        parser.error("--timesteps must be >= 1")
    return args


def _read_prompt(arg: str | None) -> str:
    if arg is not None:
        return arg
    if sys.stdin is None or sys.stdin.closed or sys.stdin.isatty():
        return ""
    return sys.stdin.read()


def _spiking_model(args: argparse.Namespace, model: GPT2Model | SpikingGPT2) -> SpikingGPT2:
    """The network `--mode snn` runs: the checkpoint at the T asked for, or `model` converted."""
    if isinstance(model, SpikingGPT2):
        if args.timesteps is not None and args.timesteps != model.timesteps:
            print(f"snnlm: warning: {args.snn} was calibrated for T={model.settings.timesteps}; "
                  f"running it at T={args.timesteps}", file=sys.stderr)
            return dataclasses.replace(model, timesteps=args.timesteps)
        return model
    timesteps = args.timesteps or DEFAULT_TIMESTEPS
    print(f"converting {args.weights} into a spiking network (T={timesteps})", file=sys.stderr)
    return convert(model, timesteps)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    prompt = _read_prompt(args.prompt)
    model = load_snn(args.snn) if args.snn is not None else load_gpt2(args.weights)
    tokenizer = tokenizer_for_weights(args.weights)
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    n_ctx = model.config.n_ctx
    if len(prompt_ids) >= n_ctx:
        if not args.crop:
            raise SnnlmError(f"the prompt is {len(prompt_ids)} tokens, the context window holds {n_ctx}; "
                             f"shorten it or pass --crop to keep its last {n_ctx - 1} tokens")
        print(f"snnlm: warning: prompt cropped from {len(prompt_ids)} to its last {n_ctx - 1} tokens", file=sys.stderr)
        prompt_ids = prompt_ids[-(n_ctx - 1):]
    if args.mode == "snn":
        model = _spiking_model(args, model)
    decoder = make_decoder(model)
    stream = tokenizer.stream_decoder()
    out = sys.stdout
    out.write(prompt)
    out.flush()
    for token in generate_ids(decoder, prompt_ids, args.max_new_tokens, tokenizer.eot_id, n_ctx,
                              np.random.default_rng(args.seed), args.temperature, args.top_k, args.top_p):
        out.write(stream.push(token))
        out.flush()
    out.write(stream.flush() + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
