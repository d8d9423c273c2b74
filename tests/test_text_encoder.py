"""The built-in CLIP tokenizer and text transformer against the expected ids and the transformers oracle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import COMPVIS_TINY
from ldm.modules.encoders.clip import CLIPTextConfig, CLIPTextTransformer, CLIPTokenizer

EXPECTED = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "Van Gogh": [49406, 2451, 19697, 49407],
}
PROMPTS = [
    "a photo of a cat",
    "Van Gogh",
    "",
    "A  Painting, of Kelly McKernan!!",
    "café déjà vu 123",
    "a very long prompt " * 30,
]


@pytest.fixture(scope="module")
def builtin():
    return CLIPTokenizer.from_open_clip()


@pytest.mark.parametrize("text", sorted(EXPECTED))
def test_expected_token_ids(builtin, text):
    ids = builtin(text)[0].tolist()
    n = len(EXPECTED[text])
    assert ids[:n] == EXPECTED[text]
    assert ids[n:] == [49407] * (77 - n)


def test_builtin_equals_folder_tokenizer(builtin):
    folder = CLIPTokenizer.from_folder(COMPVIS_TINY / "text-encoder")
    assert builtin.encoder == folder.encoder
    assert torch.equal(builtin(PROMPTS), folder(PROMPTS))


def test_tokenizer_matches_transformers(builtin):
    from transformers import CLIPTokenizer as HFTokenizer

    hf = HFTokenizer(
        str(COMPVIS_TINY / "text-encoder" / "vocab.json"),
        str(COMPVIS_TINY / "text-encoder" / "merges.txt"),
        pad_token="<|endoftext|>",
    )
    ref = hf(PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")["input_ids"]
    assert torch.equal(builtin(PROMPTS), ref)


def test_truncation_keeps_end_token(builtin):
    ids = builtin("word " * 200)[0]
    assert ids.shape == (77,) and ids[0] == 49406 and ids[-1] == 49407
    assert builtin.decode(builtin.encode("a photo of a cat")) == "a photo of a cat"


def test_text_transformer_matches_transformers():
    from transformers import CLIPTextConfig as HFConfig
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    hf = CLIPTextModel(
        HFConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    ).eval()
    ours = CLIPTextTransformer(
        CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    )
    sd = {k.removeprefix("text_model."): v for k, v in hf.state_dict().items() if "position_ids" not in k}
    ours.load_state_dict(sd, strict=True)
    ids = CLIPTokenizer.from_open_clip()(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_full_size_embedder_is_offline():
    """The default (ViT-L/14) encoder builds with the hub forced offline and no cache: nothing is fetched."""
    code = (
        "import torch\nfrom ldm.modules.encoders.modules import FrozenCLIPEmbedder\n"
        "with torch.device('meta'):\n    e = FrozenCLIPEmbedder()\n"
        "assert e.transformer.embeddings.token_embedding.weight.shape == (49408, 768)\n"
        "assert len(e.transformer.encoder.layers) == 12\n"
        "print(e.tokenizer('Van Gogh')[0, :4].tolist())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[49406, 2451, 19697, 49407]"


def test_unknown_text_encoder_is_a_clear_error(monkeypatch):
    from ldm.modules.encoders.modules import resolve_text_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a reachable hub id"):
        resolve_text_encoder("someone/not-a-real-clip-model-xyz")
