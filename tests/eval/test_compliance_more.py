"""Document isolation (input features and model), validation isolation and byte accounting checks
(pgolf/eval/compliance.py)."""

import pytest
import torch
import torch.nn.functional as F
from testkit import small_scoring_gpt

from pgolf.config import ModelConfig
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.eval.compliance import (check_byte_accounting, check_input_document_isolation, check_model_document_isolation,
                                   check_validation_refused)
from pgolf.model.gpt import GPT

BOS = 1


def smear_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1,
                            smear_gate_enabled=True))
    with torch.no_grad():  # open the gate (it is the identity at init)
        model.smear_gate.smear_lambda.fill_(1.0)
        model.smear_gate.gate.weight.normal_(0, 1.0)
    return model.eval()


def test_input_isolation_passes_with_the_bos_fix_and_catches_a_leak_across_bos():
    tokens = torch.tensor([BOS, 5, 6, 7, 8, BOS, 9, 10, 11, 12])
    model = smear_model()
    assert check_input_document_isolation(model, tokens, BOS).passed
    model.smear_gate.bos_token_id = -1  # the pre-fix SmearGate: the BOS embedding sees the previous token
    leaked = check_input_document_isolation(model, tokens, BOS)
    assert not leaked.passed and "document isolation" in leaked.details[0] and "position 5" in leaked.details[1]


class OneDocumentAtATime(torch.nn.Module):
    """Runs every document of a row on its own: a document-isolated model by construction."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward_logits(self, x_BT):
        rows = []
        for row in x_BT:
            starts = [0] + [i for i in (row == BOS).nonzero().flatten().tolist() if i > 0] + [row.numel()]
            rows.append(torch.cat([self.inner.forward_logits(row[None, a:b]) for a, b in zip(starts, starts[1:])], dim=1))
        return torch.cat(rows)

    def forward(self, x_BT, y_BT, reduction="mean"):
        logits = self.forward_logits(x_BT)
        return F.cross_entropy(logits.flatten(0, 1), y_BT.flatten(), reduction=reduction).view_as(y_BT)


def test_model_isolation_passes_for_isolated_documents_and_fails_for_crossing_attention():
    tokens = torch.tensor([BOS, 5, 6, 7, 8, 9, BOS, 9, 10, 11, 12, 13, BOS, 14, 15])
    gpt = small_scoring_gpt(32)
    isolated = check_model_document_isolation(OneDocumentAtATime(gpt), tokens, BOS)
    assert isolated.passed and "8 scores after the boundary at 6 unchanged" in isolated.details[0]
    crossing = check_model_document_isolation(gpt, tokens, BOS)  # ordinary causal attention over the packed row
    assert not crossing.passed
    assert crossing.details[0] == "rule: no score may depend on an earlier document (document isolation)"
    assert "score of target 6 (document starting at 6) changed by" in crossing.details[1]


@pytest.mark.parametrize("isolated", [True, False])
def test_model_isolation_of_the_real_model_follows_doc_isolated_attention(isolated):
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=32, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1, bos_token_id=BOS,
                          doc_isolated_attention=isolated, smear_gate_enabled=True))
    with torch.no_grad():  # the zero-initialised output projections would hide what attention sees
        for module in gpt.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
    tokens = torch.tensor([BOS, 5, 6, 7, 8, 9, BOS, 9, 10, 11, 12, 13, BOS, 14, 15])
    result = check_model_document_isolation(gpt.eval(), tokens, BOS)
    assert result.passed == isolated, result.details


def test_every_training_loader_refuses_validation_files(tmp_path):
    val = tmp_path / "fineweb_val_000000.bin"
    write_shard(val, list(range(2, 30)) * 50)
    loaders = {"sequential": DistributedTokenLoader, "shuffled": ShuffledSequenceLoader}
    assert check_validation_refused(loaders, [val], 32).passed

    class CarelessLoader:
        def __init__(self, files, rank, world_size, device, vocab_size=None):
            self.files = files

    result = check_validation_refused({**loaders, "careless": CarelessLoader}, [val], 32)
    assert not result.passed and "careless" in result.details[0]


def test_byte_accounting_matches_decoded_text_and_catches_a_miscount():
    # A toy "tokenizer": id -> text; id 1 = BOS (0 bytes, boundary); 2 = "é" (2 bytes); 3.. = ascii.
    pieces = {2: "é", 3: "a", 4: "bc", 5: " d"}
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    from pgolf.data.tokenizer import ByteTables

    base = torch.tensor([0, 0, 2, 1, 2, 1], dtype=torch.int16)  # " d": 1 base byte + a leading space
    space = torch.tensor([False] * 5 + [True])
    boundary = torch.tensor([True, True] + [False] * 4)
    tables = ByteTables(base_bytes=base, has_leading_space=space, is_boundary=boundary)
    tokens = torch.tensor([1, 3, 5, 2, 4, 1, 2, 5, 5, 1])
    good = check_byte_accounting(tokens, decode, tables, BOS)
    assert good.passed, good.details
    wrong = ByteTables(base_bytes=torch.tensor([0, 0, 3, 1, 2, 1], dtype=torch.int16), has_leading_space=space,
                       is_boundary=boundary)  # "é" counted as 3 bytes: the classic byte-fallback bug
    bad = check_byte_accounting(tokens, decode, wrong, BOS)
    assert not bad.passed and "counted" in bad.details[0]
