"""Train DLRM from Python: config, model, synthetic batches, a loop, an evaluation.

python examples/train_python_api.py
"""

# isort: off
import numbadlrm.runtime.pools  # noqa: F401  before numpy: thread pools sleep between calls
# isort: on

import numpy as np

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.data.synthetic import Teacher, batch_stream
from numbadlrm.train.metrics import evaluate_predictions

cfg = DLRMConfig.from_arch(
    sparse_feature_size=16,
    embedding_size="1000-1000-1000-1000",
    mlp_bot="13-64-16",
    mlp_top="64-1",
    interaction_op="dot",
)
model = DLRM(cfg, seed=0)
teacher = Teacher(cfg)  # a hidden logistic model that labels the synthetic samples

for step, batch in enumerate(batch_stream(cfg, "synthetic", 1500, 128, seed=1, teacher=teacher)):
    loss = model.train_step(batch, lr=0.3)
    if step % 500 == 0:
        print(f"step {step:5d}  loss {loss:.4f}")

labels, probs = [], []
for batch in batch_stream(cfg, "synthetic", 8, 4096, seed=2, teacher=teacher):
    labels.append(batch.labels)
    probs.append(model.predict(batch))
print(evaluate_predictions(np.concatenate(labels), np.concatenate(probs)))
