"""QAT: the switch is a buffer, so the forward changes once enabled, eager and under torch.compile."""

from __future__ import annotations

import pytest
import torch

from golfpack.model import GPT, ModelConfig
from golfpack.trainer.qat import build_qat


def _model() -> GPT:
    torch.manual_seed(0)
    m = GPT(ModelConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=128))
    with torch.no_grad():  # move away from the zero-init projections so every matrix matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 1024, (2, 32), generator=g), torch.randint(0, 1024, (2, 32), generator=g)


def _fake_quantized_copy(m: GPT, qat) -> GPT:
    from golfpack.packer.quantize import fake_quantize

    ref = GPT(m.config)
    sd = m.state_dict()
    ref.load_state_dict({k: fake_quantize(v, qat.specs[k]) if k in qat.specs else v for k, v in sd.items()})
    return ref


def test_policy_selects_the_matrices_int6_and_tok_emb_int8():
    m = _model()
    q = build_qat(m, "int6+tok8")
    assert q.specs["tok_emb.weight"].label() == "int8"
    assert q.specs["blocks.0.mlp.fc.weight"].label() == "int6"
    # Whatever the policy says is simulated (fp16 passthrough included); only fp32/exact are skipped.
    from golfpack.packer.policy import resolve_policy

    want = {n: s for n, s in resolve_policy("int6+tok8").resolve(m.state_dict()).items() if s.label() not in ("fp32", "exact")}
    assert q.specs == want
    assert all(s.kind != "int" for n, s in q.specs.items() if "resid_mix" in n or "q_gain" in n or "_scale" in n)


def test_eager_forward_changes_once_enabled_and_equals_the_packed_weights():
    m = _model()
    q = build_qat(m, "int6+tok8")
    x, y = _batch()
    plain = m(x, y)
    assert torch.equal(q(x, y), plain)  # before the switch: bit-identical to the plain model
    q.enable()
    qat_loss = q(x, y)
    assert abs(qat_loss.item() - plain.item()) > 1e-4
    ref = _fake_quantized_copy(m, q)(x, y)
    assert qat_loss.item() == pytest.approx(ref.item(), abs=1e-5)  # the forward sees what pack stores


def test_straight_through_gradient_reaches_the_raw_weights():
    m = _model()
    q = build_qat(m, "int6+tok8")
    q.enable()
    x, y = _batch()
    q(x, y).backward()
    # STE: d loss / d w equals d loss / d w_q evaluated at the fake-quantized weights.
    ref = _fake_quantized_copy(m, q)
    ref(x, y).backward()
    for name in ("blocks.0.attn.c_q.weight", "tok_emb.weight", "blocks.1.attn_scale"):
        g = dict(m.named_parameters())[name].grad
        g_ref = dict(ref.named_parameters())[name].grad
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_refresh_tracks_weight_updates_and_disable_restores_plain_forward():
    m = _model()
    q = build_qat(m, "int6+tok8")
    q.enable()
    x, y = _batch()
    with torch.no_grad():
        m.blocks[0].mlp.fc.weight.mul_(1.7)
    q.refresh()
    ref = _fake_quantized_copy(m, q)(x, y)
    assert q(x, y).item() == pytest.approx(ref.item(), abs=1e-5)
    q.disable()
    assert torch.equal(q(x, y), m(x, y))


@pytest.mark.slow  # ~45 s even with aot_eager: torch.compile tracing on CPU
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_forward_changes_once_enabled(backend):
    """The challenge-record failure: a flag captured at trace time keeps QAT dead under torch.compile.

    Enabling QAT must change the compiled output with the SAME graph: the second call runs under
    set_stance("fail_on_recompile"), which raises if anything the graph was guarded on changed."""
    torch._dynamo.reset()
    m = _model()
    q = build_qat(m, "int6+tok8")
    x, y = _batch()
    compiled = torch.compile(q, fullgraph=True, dynamic=False, backend=backend)
    # Two plain calls: the first fills the model's RoPE table cache (a Python attribute), which costs
    # one recompile on the second call whether or not QAT is ever used (the trainer's warmup absorbs it).
    compiled(x, y)
    before = compiled(x, y).item()
    assert before == pytest.approx(m(x, y).item(), abs=1e-5)
    q.enable()
    with torch.compiler.set_stance("fail_on_recompile"):
        after = compiled(x, y).item()
        q.disable()  # and back off again, still without a recompile
        off_again = compiled(x, y).item()
    expected = _fake_quantized_copy(m, q)(x, y).item()
    assert abs(after - before) > 1e-4
    assert after == pytest.approx(expected, abs=1e-4)
    assert off_again == before


def test_fail_on_recompile_does_catch_a_python_flag():
    """Control for the test above: the stance really fails when a forward branches on a Python flag."""
    torch._dynamo.reset()

    class Flagged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.on = False

        def forward(self, x):
            return self.lin(x).round() if self.on else self.lin(x)

    m = Flagged()
    compiled = torch.compile(m, fullgraph=True, dynamic=False, backend="aot_eager")
    x = torch.randn(2, 4)
    compiled(x)
    m.on = True
    with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(Exception, match="(?i)recompil"):
        compiled(x)


def test_gptq_specs_train_on_the_plain_rounding_grid() -> None:
    """QAT has no Hessian: a +gptq policy simulates the same grid with round-to-nearest."""
    from golfpack.model import ModelConfig, build_model
    from golfpack.packer.policy import Policy
    from golfpack.trainer.qat import QATModel

    torch.manual_seed(0)
    m = build_model(ModelConfig(num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64))
    pol = Policy.preset("int6+tok8").with_overrides(["blocks.*.mlp.*=int5:mse+gptq"])
    q = QATModel(m, pol)
    assert q.specs["blocks.0.mlp.fc.weight"].label() == "int5:mse"
    q.enable()  # would raise "needs a Hessian" if the gptq spec reached fake_quantize
    x = torch.randint(0, 64, (2, 8))
    assert torch.isfinite(q(x, x))
