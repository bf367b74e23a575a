"""The memory estimate's measured parts: a block's saved tensors, the frozen base in bf16, the gradient buffer."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lmtune.training.memory import _block_at, measured_block


def _llama(layers: int, attention: str = "sdpa") -> torch.nn.Module:
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=176, num_hidden_layers=layers,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention)


def _saved_by_whole_forward(model: torch.nn.Module, length: int) -> int:
    """Bytes autograd keeps for a whole forward pass (weights left out), counted from outside the model."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def count(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        model(input_ids=(torch.arange(length) % 300)[None])
    return sum(saved.values())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_block_s_measured_bytes_equal_what_one_more_block_adds_to_a_whole_forward_pass(attention):
    """Independent count: a 4-block model keeps, beyond a 2-block one, two blocks' tensors."""
    length = 96
    per_block = (_saved_by_whole_forward(_llama(4, attention), length)
                 - _saved_by_whole_forward(_llama(2, attention), length)) / 2
    kept, block_input = measured_block(_llama(2, attention), length, bf16=False, copies=False)
    assert kept == pytest.approx(per_block, rel=0.05)  # 2.5% more measured: the probe's input is its own tensor
    assert block_input == length * 64 * 4  # fp32 hidden states of batch 1


def test_the_length_extrapolation_keeps_eager_attention_s_quadratic_part():
    """From 64 and 128 tokens to 300: eager attention's probabilities grow with the square of the length."""
    model = _llama(2, "eager")
    extrapolated, _ = _block_at(model, 300, bf16=False, copies=False)
    measured, _ = measured_block(model, 300, bf16=False, copies=False)
    assert extrapolated == pytest.approx(measured, rel=0.03)
    linear_only = measured_block(model, 64, bf16=False, copies=False)[0] * 300 / 64
    assert measured > 1.5 * linear_only  # the quadratic part matters at this length


def test_the_probe_measures_bf16_copies_and_checkpointed_blocks_as_training_runs_them():
    model = _llama(2)
    fp32, _ = measured_block(model, 64, bf16=False, copies=False)
    bf16, bf16_input = measured_block(model, 64, bf16=True, copies=True)
    assert bf16_input == 64 * 64 * 2 and 0.4 * fp32 < bf16 < 0.75 * fp32
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert measured_block(model, 64, bf16=False, copies=False)[0] == fp32  # a recomputed block keeps all of it
    assert model.model.layers[0].gradient_checkpointing  # and checkpointing is back on
    rng = torch.get_rng_state()
    measured_block(model, 64, bf16=False, copies=False)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe's dropout draws its own numbers


def test_a_frozen_base_becomes_bf16_in_place_and_the_trained_weights_stay_fp32():
    from lmtune.training.bf16_weights import frozen_to_bf16

    model = _llama(1)
    for name, param in model.named_parameters():
        param.requires_grad_("mlp" in name)
    frozen_to_bf16(model)
    assert {p.requires_grad: p.dtype for p in model.parameters()} == {False: torch.bfloat16, True: torch.float32}


def test_the_logits_sized_gradient_buffer_is_kept_only_for_a_shape_that_repeats():
    from lmtune.tasks import losses

    losses.release_buffers()
    pool = losses._POOL

    def step(rows: int) -> None:
        logits = torch.randn(rows, 50, requires_grad=True)
        losses.cross_entropy(logits, torch.randint(0, 50, (rows,))).backward()

    step(8)
    assert pool.tensor is None  # a first shape is not kept
    step(8)
    kept = pool.tensor
    assert kept is not None and kept.shape == (8, 50)  # it repeated: kept
    step(8)
    assert pool.tensor is kept  # and reused
    step(12)
    assert pool.tensor is None  # another length (SFT batches): the old buffer goes, the new one is not kept
    step(12)
    assert pool.tensor is not None
    losses.release_buffers()
    assert pool.tensor is None


def test_making_a_loaded_base_bf16_hands_its_file_pages_back_and_keeps_its_values(tmp_path):
    """transformers maps the weights file: the fp32 pages of each converted weight go at once (before, the whole
    file stayed resident beside the new bf16 tensors until the last weight was converted)."""
    from lmtune.heap import weight_files
    from lmtune.training.bf16_weights import frozen_to_bf16
    from lmtune.training.memory import _page_in

    config = AutoConfig.for_model("llama", hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=4000)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    files = weight_files()
    if files is None:
        pytest.skip("no /proc/self/smaps here")
    ours = [f for f in weight_files() if any(f[0] <= p.data_ptr() < f[1] for p in model.parameters())]
    assert ours, "transformers did not map the weights file"
    params = list(model.parameters())
    _page_in(params)
    expected = {name: p.detach().to(torch.bfloat16).clone() for name, p in model.named_parameters()}
    resident = sum(f[2] for f in weight_files() if f[:2] in {g[:2] for g in ours})
    for param in model.model.layers.parameters():  # the blocks frozen, the embeddings still read from the file
        param.requires_grad_(False)
    frozen_to_bf16(model)
    left = sum(f[2] for f in weight_files() if f[:2] in {g[:2] for g in ours})
    blocks = sum(p.numel() * 4 for p in model.model.layers.parameters())
    assert resident - left > 0.9 * blocks  # the blocks' fp32 pages went
    for name, param in model.named_parameters():
        assert torch.equal(param.detach().to(torch.bfloat16), expected[name]), name  # converted and untouched alike


def test_the_layers_counted_are_the_transformer_layers_of_encoders_and_encoder_decoders():
    """BERT names its embeddings among its unsplittable modules, BART its encoder and decoder layers: the probe runs
    a layer, and every layer counts."""
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from lmtune.training.memory import layer_blocks

    bert = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "bert", hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, vocab_size=300))
    bart = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(
        "bart", d_model=64, vocab_size=300, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128))
    assert [type(b).__name__ for b in layer_blocks(bert)] == ["BertLayer"] * 3
    assert [type(b).__name__ for b in layer_blocks(bart)] == ["BartEncoderLayer"] * 2 + ["BartDecoderLayer"] * 3
    for model in (bert, bart):
        kept, block_input = measured_block(model, 32, bf16=False, copies=False)
        assert kept > 0 and block_input == 32 * 64 * 4  # a layer ran, not the embeddings


def test_a_run_s_peak_memory_is_its_own_not_that_of_the_process_that_started_it():
    """``ru_maxrss`` survives ``exec``: a child of a big process reported the parent's size as its peak (metrics.json's
    ``peak_rss_mib`` of a run started from pytest or a notebook). `peak_resident` reads the child's own."""
    import subprocess
    import sys

    ballast = bytearray(1536 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touched: resident in this process
    code = ("import resource; from lmtune.heap import peak_resident; "
            "print(peak_resident(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    del ballast
    assert inherited > 1536 * 2**20  # the old reading: this process's size, ballast included, not the child's
    assert 0 < own < 1024 * 2**20  # the child imported torch: a few hundred MiB
