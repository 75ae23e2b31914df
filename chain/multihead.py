"""One encoder, one head per task: the model a rehearsal stage trains.

``MultiHead`` wraps an HF sequence classifier whose own head belongs to the stage's task
(task id 0) and holds every other task's head as a separate parameter set. A batch carries
``task_ids`` (one per example); for each task present, its rows go through the encoder
with that task's head swapped in by ``torch.func.functional_call``, so the head's forward
is the architecture's own (BERT's dropout + classifier, DistilBERT's pre_classifier + ReLU
+ classifier) and nothing is re-implemented per model. The loss is the mean over the
batch of each example's cross-entropy under its own head.

Rows of different tasks share a batch, so the encoder runs once per example (on each
task's rows of the batch); the logits come back padded to the widest head with -inf.

Per-task soft targets (distilling every head at once after pruning) fit here: give
``MultiHead`` a teacher of the same shape and replace the per-group CE by
``alpha * T^2 * KL(teacher_g || student_g) + (1 - alpha) * CE`` inside ``forward``'s loop.

>>> mh = MultiHead(model, "sst2", {"subj": subj_head_state})
>>> out = mh(input_ids=ids, attention_mask=mask, task_ids=torch.tensor([0, 1]), labels=y)
>>> mh.head_states()["subj"]   # the (updated) Subj head, ready for chain.heads.save_head_state
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _key(name: str) -> str:
    return name.replace(".", "__")  # parameter names cannot contain dots


class MultiHead(nn.Module):
    """``model`` with its own head for ``own`` (task id 0) and ``heads`` for the others (ids 1..)."""

    # Trainer must not pass num_items_in_batch: the loss here is already a per-example mean
    accepts_loss_kwargs = False

    def __init__(self, model, own: str, heads: dict[str, dict[str, torch.Tensor]]):
        super().__init__()
        from .heads import head_state

        self.model = model
        self.tasks = [own, *heads]
        own_names = set(head_state(model))
        self.extra = nn.ModuleDict()
        for task, state in heads.items():
            if set(state) != own_names:
                raise ValueError(f"head of task {task!r} has tensors {sorted(state)}, the model's head has "
                                 f"{sorted(own_names)}: heads of another architecture?")
            holder = nn.Module()
            ref = model.state_dict()
            for name, t in state.items():
                t = t.to(device=ref[name].device, dtype=ref[name].dtype if t.is_floating_point() else t.dtype)
                if t.is_floating_point():
                    holder.register_parameter(_key(name), nn.Parameter(t.clone()))
                else:
                    holder.register_buffer(_key(name), t.clone())
            self.extra[task] = holder

    def task_id(self, task: str) -> int:
        return self.tasks.index(task)

    def _swapped(self, task: str) -> dict[str, torch.Tensor]:
        holder = self.extra[task]
        return {name.replace("__", "."): t for name, t in [*holder.named_parameters(), *holder.named_buffers()]}

    def logits(self, task: str, inputs: dict) -> torch.Tensor:
        """(B, num_labels of ``task``) logits of ``task``'s head on the shared encoder."""
        if task == self.tasks[0]:
            return self.model(**inputs).logits
        return torch.func.functional_call(self.model, self._swapped(task), args=(), kwargs=inputs).logits

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, task_ids=None):
        inputs = {k: v for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                    ("token_type_ids", token_type_ids)) if v is not None}
        n = input_ids.shape[0]
        if task_ids is None:
            task_ids = torch.zeros(n, dtype=torch.long, device=input_ids.device)
        groups = []
        for tid in task_ids.unique().tolist():
            idx = (task_ids == tid).nonzero(as_tuple=True)[0]  # (b,) rows of this task
            groups.append((idx, self.logits(self.tasks[tid], {k: v[idx] for k, v in inputs.items()})))
        width = max(lg.shape[-1] for _, lg in groups)
        logits = groups[0][1].new_full((n, width), float("-inf"))  # (B, widest head)
        for idx, lg in groups:
            logits[idx, : lg.shape[-1]] = lg
        loss = None
        if labels is not None:  # mean over the batch of each example's CE under its own head
            loss = sum(F.cross_entropy(lg, labels[idx], reduction="sum") for idx, lg in groups) / n
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(loss=loss, logits=logits)

    def head_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """{task: head state} for every task, the own one included (as ``chain.heads.head_state``)."""
        from .heads import head_state

        out = {self.tasks[0]: head_state(self.model)}
        for task in self.tasks[1:]:
            out[task] = {k: v.detach().cpu().contiguous().clone() for k, v in self._swapped(task).items()}
        return out
