"""torch.nn.Module instrumentation on CPU: span trees, shapes, exceptions, nesting, torch.compile, NVTX."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import otel_vision  # noqa: E402
from otel_vision.testing import CapturedTelemetry, capture_telemetry  # noqa: E402


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x: Any, scale: float = 1.0) -> Any:
        return self.head(self.backbone(x)) * scale


@pytest.fixture
def resnet() -> Iterator[Any]:
    model = torchvision.models.resnet18(weights=None).eval()
    yield model
    otel_vision.uninstrument_module(model)


def _hooks(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _children(captured: CapturedTelemetry, parent: Any) -> list[Any]:
    kids = [s for s in captured.spans() if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(kids, key=lambda s: s.start_time)


class TestSpans:
    def test_model_span_with_input_summary(self, vision_telemetry: CapturedTelemetry, resnet: Any) -> None:
        """Each forward is one inference span with model name, input shapes and dtype (never values) and device."""
        otel_vision.instrument_module(resnet, name="resnet18")
        with torch.inference_mode():
            resnet(torch.randn(2, 3, 64, 64))
            resnet(torch.randn(1, 3, 32, 32))
        first, second = vision_telemetry.spans("inference")
        assert first.attributes["vision.model.name"] == "resnet18" and first.attributes["vision.stage"] == "inference"
        assert first.attributes["vision.input.shapes"] == ("float32[2,3,64,64]",)
        assert first.attributes["vision.device"] == "cpu" and first.attributes["vision.batch.size"] == 2
        assert second.attributes["vision.input.shapes"] == ("float32[1,3,32,32]",)
        (point,) = vision_telemetry.points("vision.stage.duration")
        assert point.count == 2 and point.attributes == {"vision.stage": "inference", "vision.model.name": "resnet18"}

    def test_each_input_signature_summarized_on_its_own(self, vision_telemetry: CapturedTelemetry) -> None:
        """A call with the same shape but another dtype, or the same tensor by keyword, gets its own true summary."""
        model = torch.nn.Flatten()
        otel_vision.instrument_module(model)
        model(torch.zeros(2, 3))
        model(torch.zeros(2, 3, dtype=torch.float64))
        model(torch.zeros(2, 3, dtype=torch.int64))
        model(input=torch.zeros(2, 3, dtype=torch.float64))
        model(torch.nn.Parameter(torch.zeros(5, 3)))  # a Tensor subclass
        shapes = [s.attributes["vision.input.shapes"] for s in vision_telemetry.spans("inference")]
        assert shapes == [("float32[2,3]",), ("float64[2,3]",), ("int64[2,3]",), ("float64[2,3]",), ("float32[5,3]",)]
        assert [s.attributes["vision.batch.size"] for s in vision_telemetry.spans("inference")] == [2, 2, 2, 2, 5]

    def test_kwargs_and_several_inputs(self, vision_telemetry: CapturedTelemetry) -> None:
        """Tensors passed as keyword arguments are summarized too; non-tensors are not."""
        model = Toy()
        otel_vision.instrument_module(model)
        model(x=torch.randn(3, 16), scale=2.0)
        span = vision_telemetry.span("inference")
        assert span.attributes["vision.model.name"] == "Toy" and span.attributes["vision.input.shapes"] == (
            "float32[3,16]",
        )

    def test_chosen_submodules(self, vision_telemetry: CapturedTelemetry, resnet: Any) -> None:
        """submodules=[...] adds child spans named after their path, in call order, under the model span."""
        otel_vision.instrument_module(resnet, name="resnet18", submodules=["layer1", "layer4", "fc"])
        with torch.inference_mode():
            resnet(torch.randn(1, 3, 64, 64))
        root = vision_telemetry.span("inference")
        children = _children(vision_telemetry, root)
        assert [s.name for s in children] == ["layer1", "layer4", "fc"]
        assert children[1].attributes["vision.module.path"] == "layer4"
        assert all(c.start_time >= root.start_time and c.end_time <= root.end_time for c in children)

    def test_depth(self, vision_telemetry: CapturedTelemetry) -> None:
        """submodules=1 traces every direct child (not the leaves below them)."""
        model = Toy()
        otel_vision.instrument_module(model, submodules=1)
        model(torch.randn(2, 16))
        assert [s.name for s in _children(vision_telemetry, vision_telemetry.span("inference"))] == ["backbone", "head"]

    def test_bad_submodule_named(self) -> None:
        """An unknown submodule name is a ValueError naming it and listing the children; nothing is left attached."""
        model = Toy()
        with pytest.raises(ValueError, match=r"no submodule 'neck'.*\['backbone', 'head'\]"):
            otel_vision.instrument_module(model, submodules=["backbone", "neck"])
        assert _hooks(model) == 0
        with pytest.raises(TypeError, match="torch.nn.Module"):
            otel_vision.instrument_module(object())

    def test_exception_inside_forward(self, vision_telemetry: CapturedTelemetry) -> None:
        """An exception in forward marks the model and submodule spans ERROR and reaches the caller unchanged."""
        model = Toy()
        otel_vision.instrument_module(model, submodules=["head"])
        with pytest.raises(RuntimeError) as caught:
            model(torch.randn(2, 15))  # wrong feature size: the backbone's Linear raises
        inference = vision_telemetry.span("inference")
        assert inference.status.status_code is StatusCode.ERROR and inference.attributes["error.type"] == "RuntimeError"
        assert "mat1 and mat2" in str(caught.value)
        # the context is clean again: a following call is a new root
        model(torch.randn(2, 16))
        second = vision_telemetry.spans("inference")[-1]
        assert second.parent is None and second.status.status_code is StatusCode.UNSET


class TestNesting:
    def test_no_duplicate_span_for_an_instrumented_child(self, vision_telemetry: CapturedTelemetry) -> None:
        """A model instrumented inside another instrumented model adds no span of its own unless asked."""
        outer = Toy()
        otel_vision.instrument_module(outer.head, name="head-model")
        otel_vision.instrument_module(outer, name="outer")
        outer(torch.randn(2, 16))
        assert [s.attributes["vision.model.name"] for s in vision_telemetry.spans()] == ["outer"]
        outer.head(torch.randn(2, 32))  # called alone, it is traced
        assert vision_telemetry.spans()[-1].attributes["vision.model.name"] == "head-model"

    def test_nested_when_asked(self, vision_telemetry: CapturedTelemetry) -> None:
        """nested=True traces the inner model as a child of the outer one."""
        outer = Toy()
        otel_vision.instrument_module(outer.head, name="head-model", nested=True)
        otel_vision.instrument_module(outer, name="outer")
        outer(torch.randn(2, 16))
        inner = [s for s in vision_telemetry.spans() if s.attributes["vision.model.name"] == "head-model"]
        root = [s for s in vision_telemetry.spans() if s.attributes["vision.model.name"] == "outer"]
        assert inner[0].parent.span_id == root[0].context.span_id

    def test_inside_a_stage(self, vision_telemetry: CapturedTelemetry) -> None:
        """The model span nests under the caller's stage span."""
        model = Toy()
        otel_vision.instrument_module(model)
        with otel_vision.request("classify"):
            model(torch.randn(1, 16))
        assert vision_telemetry.span("inference").parent.span_id == vision_telemetry.span("classify").context.span_id


class TestLifecycle:
    def test_uninstrument_removes_every_hook(self, vision_telemetry: CapturedTelemetry, resnet: Any) -> None:
        """uninstrument_module removes all hooks; re-instrumenting replaces, never stacks."""
        otel_vision.instrument_module(resnet, submodules=2)
        assert _hooks(resnet) > 0
        otel_vision.instrument_module(resnet, submodules=["fc"])
        assert _hooks(resnet) == 4
        otel_vision.uninstrument_module(resnet)
        assert _hooks(resnet) == 0
        with torch.inference_mode():
            resnet(torch.randn(1, 3, 32, 32))
        assert vision_telemetry.spans() == []
        otel_vision.uninstrument_module(resnet)  # a no-op the second time


class TestCompile:
    def test_compiled_wrapper_fullgraph(self, vision_telemetry: CapturedTelemetry) -> None:
        """Instrumenting the torch.compile wrapper works with fullgraph=True: spans, and no graph break."""
        torch._dynamo.reset()
        x = torch.randn(4, 16)
        compiled = torch.compile(Toy(), backend="eager", fullgraph=True)
        otel_vision.instrument_module(compiled, name="toy")
        compiled(x)
        compiled(x)
        assert len(vision_telemetry.spans("inference")) == 2
        assert torch._dynamo.explain(compiled)(x).graph_break_count == 0

    def test_instrument_then_compile(self, vision_telemetry: CapturedTelemetry) -> None:
        """Instrumenting first and compiling after (fullgraph=True) also adds no graph break."""
        torch._dynamo.reset()
        x = torch.randn(4, 16)
        model = Toy()
        otel_vision.instrument_module(model, name="toy")
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        compiled(x)
        assert len(vision_telemetry.spans("inference")) == 1
        assert vision_telemetry.span("inference").attributes["vision.model.name"] == "toy"
        torch._dynamo.reset()
        assert torch._dynamo.explain(model)(x).graph_break_count == 0


def test_nvtx_ranges_mirror_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nvtx=True every span opens and closes an NVTX range of the same name (off by default)."""
    ranges: list[tuple[str, Any]] = []

    def start(name: str) -> int:
        ranges.append(("start", name))
        return len(ranges)

    monkeypatch.setattr(torch.cuda.nvtx, "range_start", start)
    monkeypatch.setattr(torch.cuda.nvtx, "range_end", lambda handle: ranges.append(("end", handle)))
    model = Toy()
    with capture_telemetry() as captured:
        otel_vision.instrument_module(model, submodules=["head"])
        model(torch.randn(1, 16))
    assert ranges == []
    with capture_telemetry(nvtx=True) as captured:
        with otel_vision.stage("preprocess"):
            pass
        model(torch.randn(1, 16))
        assert len(captured.spans()) == 3
    otel_vision.uninstrument_module(model)
    assert [r for r in ranges if r[0] == "start"] == [
        ("start", "preprocess"),
        ("start", "inference"),
        ("start", "head"),
    ]
    assert sorted(r[1] for r in ranges if r[0] == "end") == [1, 3, 4]


class Scriptable(torch.nn.Module):
    """A module TorchScript can compile (Toy's default float argument is fine too; this one has a submodule path)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TestStaysWhatItWas:
    """An instrumented module is saved, loaded, copied, scripted and traced exactly as an uninstrumented one."""

    def test_torch_save_and_load(self, vision_telemetry: CapturedTelemetry, tmp_path: Any) -> None:
        """torch.save(model) works; the loaded copy gives the same outputs and is traced on its own."""
        model = Scriptable().eval()
        otel_vision.instrument_module(model, name="toy", submodules=["head"])
        x = torch.randn(2, 16)
        path = tmp_path / "model.pt"
        torch.save(model, path)
        loaded = torch.load(path, weights_only=False)
        assert torch.equal(loaded(x), model(x))
        assert len(vision_telemetry.spans("inference")) == 2 and len(vision_telemetry.spans("head")) == 2
        otel_vision.uninstrument_module(loaded)
        assert _hooks(loaded) == 0 and _hooks(model) == 4
        otel_vision.uninstrument_module(model)

    def test_deepcopy_is_its_own_module(self, vision_telemetry: CapturedTelemetry) -> None:
        """A deep copy is instrumented on its own terms: re-instrumenting or uninstrumenting it leaves the original."""
        model = Scriptable().eval()
        otel_vision.instrument_module(model, name="original")
        twin = copy.deepcopy(model)
        otel_vision.instrument_module(twin, name="twin")
        x = torch.randn(1, 16)
        twin(x)
        assert [s.attributes["vision.model.name"] for s in vision_telemetry.spans("inference")] == ["twin"]
        assert _hooks(twin) == 2
        otel_vision.uninstrument_module(twin)
        assert _hooks(twin) == 0 and _hooks(model) == 2
        model(x)
        assert [s.attributes["vision.model.name"] for s in vision_telemetry.spans("inference")] == ["twin", "original"]
        otel_vision.uninstrument_module(model)

    def test_pickle_round_trip(self, vision_telemetry: CapturedTelemetry) -> None:
        """pickle.dumps of an instrumented module works and the result computes the same."""
        model = Scriptable().eval()
        otel_vision.instrument_module(model)
        x = torch.randn(3, 16)
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))
        otel_vision.uninstrument_module(model)

    def test_torch_jit_script(self, vision_telemetry: CapturedTelemetry) -> None:
        """torch.jit.script compiles an instrumented module (without our hooks) and leaves the module instrumented."""
        model = Scriptable().eval()
        plain = copy.deepcopy(model)
        otel_vision.instrument_module(model, submodules=["backbone"])
        scripted = torch.jit.script(model)
        x = torch.randn(2, 16)
        assert torch.equal(scripted(x), plain(x))
        assert vision_telemetry.spans() == []  # the compiled module is not traced
        model(x)
        assert {s.name for s in vision_telemetry.spans()} == {"inference", "backbone"}
        assert isinstance(model.backbone, torch.nn.Sequential)  # the user's module is untouched
        otel_vision.uninstrument_module(model)

    def test_torch_jit_trace_adds_no_warning(self, vision_telemetry: CapturedTelemetry) -> None:
        """torch.jit.trace warns exactly as much on an instrumented module as on a plain one."""
        x = torch.randn(2, 16)

        def trace_warnings(model: Any) -> list[str]:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                traced = torch.jit.trace(model, x)
            assert torch.equal(traced(x), model(x))
            return [str(w.message) for w in caught]

        plain = trace_warnings(Scriptable().eval())
        model = Scriptable().eval()
        otel_vision.instrument_module(model)
        assert trace_warnings(model) == plain
        otel_vision.uninstrument_module(model)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_outputs_and_gradients_identical(arch: str, vision_telemetry: CapturedTelemetry) -> None:
    """torchvision models give bit-identical outputs (eval, eager and compiled) and gradients (train) with and
    without instrumentation, submodule spans included."""
    torch.manual_seed(0)
    plain = getattr(torchvision.models, arch)(weights=None)
    traced = copy.deepcopy(plain)
    first_child = next(name for name, _ in traced.named_children())
    otel_vision.instrument_module(traced, name=arch, submodules=[first_child])
    x = torch.randn(2, 3, 64, 64)
    plain.eval(), traced.eval()
    with torch.inference_mode():
        assert torch.equal(plain(x), traced(x))
    torch._dynamo.reset()
    compiled_plain, compiled_traced = torch.compile(plain, backend="eager"), torch.compile(traced, backend="eager")
    with torch.inference_mode():
        assert torch.equal(compiled_plain(x), compiled_traced(x))
    plain.train(), traced.train()
    torch.manual_seed(1)
    plain(x).square().mean().backward()
    torch.manual_seed(1)
    traced(x).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), traced.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    # The model span in all three calls; the submodule span at least in the eager ones (under torch.compile a
    # submodule's hooks are the compiler's business: see docs/torch.md).
    assert len(vision_telemetry.spans("inference")) == 3 and len(vision_telemetry.spans(first_child)) >= 2
    otel_vision.uninstrument_module(traced)
