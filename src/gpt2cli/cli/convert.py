"""`gpt2 convert from-hf|to-hf`: Hugging Face GPT-2 weights in and out."""

from __future__ import annotations

from pathlib import Path

import typer

from gpt2cli.cli.common import wrote

convert_app = typer.Typer(help="Convert between Hugging Face GPT-2 and gpt2cli checkpoints.", no_args_is_help=True)


@convert_app.command("from-hf")
def from_hf_cmd(
    src: Path = typer.Argument(..., help="A Hugging Face GPT-2 directory (config.json + model.safetensors) or its model.safetensors."),
    dst: Path = typer.Argument(..., help="Where to write our checkpoint (.safetensors)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing DST."),
) -> None:
    """Hugging Face GPT-2 -> gpt2cli checkpoint.

    Example: gpt2 convert from-hf ./gpt2-hf gpt2.safetensors
    """
    from gpt2cli.convert import from_hf

    model = from_hf(src, dst, force=force)
    cfg = model.config
    wrote(f"{dst}: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, {model.num_params():,} parameters")


@convert_app.command("to-hf")
def to_hf_cmd(
    ckpt: Path = typer.Argument(..., help="A gpt2cli checkpoint (standard attention)."),
    dst_dir: Path = typer.Argument(..., help="Directory to write config.json and model.safetensors into."),
    force: bool = typer.Option(
        False, "--force", help="Write into a DST_DIR that already holds files (never a run dir or data dir)."
    ),
) -> None:
    """gpt2cli checkpoint -> a directory transformers' GPT2LMHeadModel.from_pretrained loads.

    Example: gpt2 convert to-hf runs/tiny/ckpt.safetensors ./tiny-hf
    """
    from gpt2cli.convert import to_hf

    to_hf(ckpt, dst_dir, force=force)
    wrote(f"{dst_dir}/config.json and {dst_dir}/model.safetensors")


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
