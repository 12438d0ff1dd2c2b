"""PFMEL's Trainer: the loss is the sum of the per-task mean NSP losses of a batch, logged per task, and the new
layers can get their own learning rate."""

from __future__ import annotations

import pytest
import torch

from modeling_mel.pfmel_data import ListDataset, PFMELCollator, encode_pairs, make_pretraining_pairs
from modeling_mel.pfmel_trainer import PFMELTrainer
from modeling_mel.pfmel_training import PFMELModelArguments, PFMELPretrainingArguments, load_model_and_processor

from pfmel_fixtures import pfmel_corpus, tiny_backbone, toy_corpus  # noqa: F401 - fixtures


def test_trainer_loss_is_sum_of_task_means(pfmel_corpus, tiny_backbone, tmp_path):
    model, processor = load_model_and_processor(PFMELModelArguments(backbone=tiny_backbone, max_length=64))
    pairs = make_pretraining_pairs(pfmel_corpus.sentences("train"), swap_roles=True, seed=0)
    feats = encode_pairs(processor, pairs)
    pick = [0, 1, next(i for i, p in enumerate(pairs) if p.task == "text"), next(i for i, p in enumerate(pairs) if p.task == "multi")]
    batch = PFMELCollator(processor, pfmel_corpus.table)([feats[i] for i in pick])
    args = PFMELPretrainingArguments(output_dir=str(tmp_path), max_steps=4, logging_steps=2, report_to="none", use_cpu=True,
                                     save_strategy="no", disable_tqdm=True)
    trainer = PFMELTrainer(model=model, args=args, train_dataset=ListDataset(feats),
                           data_collator=PFMELCollator(processor, pfmel_corpus.table), processing_class=processor)
    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "task_ids")}
    per = torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"], reduction="none")
    t = batch["task_ids"]
    expected = sum(per[t == k].mean() for k in torch.unique(t))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(k.startswith("loss_") for h in logged for k in h if k.startswith("loss_"))
    assert any({"loss_mix", "loss_text", "loss_multi"} & set(h) for h in logged)


def test_head_learning_rate_goes_to_the_new_layers_only(tiny_backbone, tmp_path):  # noqa: F811
    model, _ = load_model_and_processor(PFMELModelArguments(backbone=tiny_backbone, max_length=64))
    args = PFMELPretrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, learning_rate=1e-5,
                                     head_learning_rate=1e-3, weight_decay=0.1)
    optimizer = PFMELTrainer(model=model, args=args).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        heads = {n.startswith(("image_projection.", "cls.")) for n in group_names}
        assert len(heads) == 1  # a group is all new layers or all backbone
        assert group["lr"] == (1e-3 if heads.pop() else 1e-5)
        decays = {not (n.endswith("bias") or "LayerNorm" in n) for n in group_names}
        assert decays == {group["weight_decay"] == 0.1}  # biases and norms without weight decay
        seen += len(group_names)
    assert seen == sum(p.requires_grad for p in model.parameters())
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3, 1e-5}
    # without head_learning_rate every parameter trains at --learning_rate
    args.head_learning_rate = None
    assert {g["lr"] for g in PFMELTrainer(model=model, args=args).create_optimizer().param_groups} == {1e-5}
