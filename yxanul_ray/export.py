"""Export a checkpoint as a Hugging Face Llama model (config.json + safetensors + tokenizer).

Our block is Llama's block (RMSNorm, RoPE in the rotate-half convention, GQA, SwiGLU, no biases),
so the export is a renaming plus splitting the fused QKV and gate/up weights.
"""

from __future__ import annotations

import os

import torch

from yxanul_ray.presets import ModelShape


def llama_config(shape: ModelShape, eos_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.d_model,
        "intermediate_size": shape.ffn_hidden,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_seq_len,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }


def to_llama_state_dict(state: dict[str, torch.Tensor], shape: ModelShape) -> dict[str, torch.Tensor]:
    d, kv = shape.d_model, shape.n_kv_heads * shape.head_dim
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["final_norm_weight"]}
    if not shape.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(shape.n_layers):
        p, h = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[p + "qkv.weight"].split([d, kv, kv], dim=0)
        gate, up = state[p + "mlp.fc1_weight"].chunk(2, dim=0)
        out.update({
            h + "input_layernorm.weight": state[p + "qkv.layer_norm_weight"],
            h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": v,
            h + "self_attn.o_proj.weight": state[p + "proj.weight"],
            h + "post_attention_layernorm.weight": state[p + "mlp.layer_norm_weight"],
            h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up,
            h + "mlp.down_proj.weight": state[p + "mlp.fc2_weight"],
        })
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def trained_tokenizer(checkpoint: str, run_spec: str, saved_identity: str | None, given: str | None = None,
                      endpoint: str | None = None) -> str:
    """The tokenizer to export with a checkpoint, as load_tokenizer takes it: the run's own
    (`run_spec`, as its job.json names it) or `given` (export's --tokenizer), held to the content
    the run trained on where the checkpoint records it (`saved_identity`, tokenizer_identity's).
    Read once (tokenizer.run_tokenizer), so the content checked is the content exported. A
    tokenizer.json edited since, or one that moved (a `ray job submit` working dir is gone once
    the job ends), is a ConfigError with the fix, not another tokenizer beside the weights. A Hub
    tokenizer is read from the Hub at `endpoint` (the run's data.hf_endpoint)."""
    from yxanul_ray.specs import ConfigError
    from yxanul_ray.tokenizer import identity_compares, run_tokenizer

    spec = given or run_spec
    checked = saved_identity is not None and identity_compares(saved_identity)
    what = f"--tokenizer {given!r}" if given else f"the run's tokenizer {run_spec!r}"
    fix = ("fix: --tokenizer PATH, a tokenizer.json (or its directory) with "
           + (f"the content the run trained on ({_short(saved_identity)})" if checked else "the run's content"))
    try:
        loaded, identity = run_tokenizer(spec, endpoint)
    except FileNotFoundError as e:  # local_tokenizer_file's: a file that moved or a directory without one
        raise ConfigError(f"{checkpoint}: {what}: {e.strerror}; {fix}") from None
    if checked and identity != saved_identity:
        raise ConfigError(f"{checkpoint}: {what} is not the tokenizer the run trained on ({_short(identity)} now, "
                          f"{_short(saved_identity)} in the checkpoint); {fix}")
    return loaded


def _short(identity: str) -> str:
    return identity[:23] + "..." if identity.startswith("sha256:") else identity


def export_hf(state: dict[str, torch.Tensor], shape: ModelShape, tokenizer_spec: str, out_dir: str,
              card: str | None = None) -> None:
    """A Hugging Face Llama model in `out_dir`: config.json (transformers' LlamaConfig),
    generation_config.json, model.safetensors, the tokenizer with its end-of-text token, and
    `card` as the model card (README.md)."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    from yxanul_ray.tokenizer import load_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    tok = load_tokenizer(tokenizer_spec)
    config = LlamaConfig(**{k: v for k, v in llama_config(shape, tok.eos_id).items() if k != "model_type"})
    config.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id).save_pretrained(out_dir)
    save_file(to_llama_state_dict(state, shape), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    tok.save(out_dir)
    if card is not None:
        with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)


def model_card(job: dict, state: dict, checkpoint: str) -> str:
    """The exported model's README.md: what trained it (the curriculum's stages, the sources at
    their pinned commits), how far (tokens), and the final held-out loss per domain."""
    lines = ["---", "library_name: transformers", "tags: [yxanul-ray, curriculum-pretraining]", "---", "",
             f"# {job['run']['name']}", "",
             f"A Llama-architecture model trained by yxanul-ray, exported from `{checkpoint}`: "
             f"{state.get('tokens', 0):,} of {job['curriculum']['target_tokens']:,} target tokens, "
             f"step {state.get('step', 0):,}.", "", "## Sources", ""]
    for name, src in job["sources"].items():
        where = (f"hf://datasets/{src['hf']}" + (f" ({src['hf_config']})" if src.get("hf_config") else "")
                 + f", split {src['split']}, commit {src.get('revision') or 'not pinned'}") if src.get("hf") \
            else f"{src['path']} ({src['format']})"
        lines.append(f"- **{name}**: {where}")
    lines += ["", f"Tokenizer: `{job['data']['tokenizer']}`.", "", "## Curriculum", "",
              "| stage | seq_len | tokens | mix |", "|---|---|---|---|"]
    for st in job["curriculum"]["stages"]:
        mix = ", ".join(f"{s} {w:.0%}" for s, w in st["mix"].items() if w)
        lines.append(f"| {st['name']} | {st['seq_len']} | {st['tokens']:,} | {mix} |")
    validation = state.get("validation") or []
    if validation:
        last = validation[-1]
        lines += ["", f"## Held-out loss (seq_len {job['curriculum']['validation_seq_len']}, "
                      f"at {last['tokens']:,} tokens)", ""]
        lines += [f"- {source}: {loss:.4f}" for source, loss in last["loss"].items()]
    return "\n".join(lines) + "\n"


def check_push_target(repo: str) -> None:
    """Refuse `--push-to-hub REPO` before any export work: a repo id the Hub would refuse, offline
    mode, or no token to push with. Raises ConfigError naming the fix."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from yxanul_ray.hub import hf_token, hub_offline
    from yxanul_ray.specs import ConfigError

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ConfigError(f"--push-to-hub {repo!r}: {str(e).rstrip('.')}; "
                          "fix: a repo id as <user or org>/<name>") from None
    if hub_offline():
        raise ConfigError(f"--push-to-hub {repo!r}: HF_HUB_OFFLINE is set, so nothing is sent to the Hub; fix: unset "
                          "it, or export without --push-to-hub and upload the folder later (`hf upload`)")
    if hf_token() is None:
        raise ConfigError(f"--push-to-hub {repo!r}: no Hugging Face token to push with; fix: HF_TOKEN in the "
                          "environment, or `hf auth login` on this machine")


def push_to_hub(out_dir: str, repo: str, endpoint: str | None, message: str) -> str:
    """Upload an exported folder to the model repo `repo` (made, private unless it exists) on the
    Hub at `endpoint` (None: this process's HF_ENDPOINT or huggingface.co) through
    `HfApi.upload_folder`, with the token huggingface_hub picks. Returns the commit's URL."""
    from huggingface_hub import HfApi

    from yxanul_ray.hub import hf_token, with_retries

    api = HfApi(endpoint=endpoint, token=hf_token())
    what = f"--push-to-hub {repo}"
    with_retries(lambda: api.create_repo(repo, repo_type="model", private=True, exist_ok=True), what, offline_fix="")
    commit = with_retries(lambda: api.upload_folder(repo_id=repo, folder_path=out_dir, repo_type="model",
                                                    commit_message=message), what, own_retries=True, offline_fix="")
    return commit.commit_url
