"""PFMEL's ``Trainer``: the NSP loss summed over the pre-training tasks of a batch, logged per task.

Loss of a batch (paper, section 3.3: ``L_pre = L_mix + L_text + L_multi``): the per-example NSP cross-entropy
is averaged within each task present in the batch, and the task means are summed. A batch that lacks a task
adds nothing for it (its term is 0 in that batch), so every present task has weight 1 whatever the batch's
task mix; with one task (fine-tuning: ``link``) the loss is the plain mean. The logs carry ``loss_mix``,
``loss_text``, ``loss_multi`` (and ``loss_link``): the mean per-example loss of each task since the previous
log, summed over processes.

The runs that use it are in :mod:`modeling_mel.pfmel_training`; the listwise reranker's subclass in
:mod:`modeling_mel.pfmel_listwise`.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .pfmel_data import TASK_LOSS_NAMES


class PFMELTrainer(Trainer):
    """``Trainer`` for NSP pairs with ``task_ids``: ``L = sum over present tasks of the task's mean loss``.

    Logs ``loss_<task>`` beside ``loss`` (see the module docstring). Use :class:`~modeling_mel.pfmel_data.PFMELCollator`
    as the data collator (dynamic padding) and ``train_sampling_strategy="group_by_length"``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        n = max(TASK_LOSS_NAMES) + 1
        self._task_sums = torch.zeros(n, dtype=torch.float64)
        self._task_counts = torch.zeros(n, dtype=torch.float64)
        self.loss_is_scaled_for_ga = False  # our loss is a per-batch quantity; Trainer divides by GA steps

    def create_optimizer(self, model=None):
        """AdamW as usual; with ``args.head_learning_rate`` the new layers (``image_projection``, ``cls``) get that
        learning rate instead of ``learning_rate`` (they start from random weights, BERT does not)."""
        head_lr = getattr(self.args, "head_learning_rate", None)
        if head_lr is None or self.optimizer is not None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                head = name.startswith(("image_projection.", "cls.")) or ".image_projection." in name or ".cls." in name
                groups.setdefault((head, name in decay), []).append(p)
        params = [
            {"params": ps, "lr": head_lr if head else self.args.learning_rate, "weight_decay": self.args.weight_decay if dec else 0.0}
            for (head, dec), ps in groups.items()
        ]
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(params, lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        task_ids = inputs.pop("task_ids", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        per_example = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction="none")  # (B,)
        if task_ids is None:
            task_ids = torch.full_like(labels, 3)
        loss = per_example.new_zeros(())
        for t in torch.unique(task_ids).tolist():
            sel = task_ids == t
            loss = loss + per_example[sel].mean()
            if model.training:
                self._task_sums[t] += float(per_example[sel].detach().sum())
                self._task_counts[t] += int(sel.sum())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process gets here at the same step
            stats = torch.cat([self._task_sums, self._task_counts]).to(self.args.device)
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            stats = stats.cpu()
            n = len(self._task_sums)
            for t in range(n):
                if stats[n + t] > 0:
                    logs[f"loss_{TASK_LOSS_NAMES[t]}"] = round(float(stats[t] / stats[n + t]), 6)
            self._task_sums.zero_()
            self._task_counts.zero_()
        super().log(logs, start_time)


__all__ = ["PFMELTrainer"]
