"""ManagerTower's task models: pre-training (MLM + ITM), VQAv2, SNLI-VE, NLVR2 and Flickr30K retrieval (ITC + ITM).

Each class is a `ManagerTowerPreTrainedModel` with the backbone in `self.managertower` (`ManagerTowerModel`) and
its head under the attribute name of the official code (github.com/LooperXX/ManagerTower, `src/modules/
mt_module.py`, `heads.py`, `objectives.py`), so the official checkpoints map by prefix:

    ManagerTowerForMaskedLM             mlm_score          transformers' BridgeTowerMLMHead (not tied), on text_features
    ManagerTowerForImageTextMatching    itm_score          transformers' BridgeTowerITMHead(2D), on pooler_output
    ManagerTowerForPreTraining          mlm_score, itm_score; loss = mlm_loss + itm_loss (unweighted)
    ManagerTowerForQuestionAnswering    vqa_classifier     Linear(2D, 2D s), LN, GELU, Linear(2D s, num_labels); BCE * C
    ManagerTowerForVisualEntailment     snli_classifier    Linear(2D, 2D s), LN, GELU, Linear(2D s, 3); CE
    ManagerTowerForNLVR2                nlvr2_classifier   Linear(4D, 2D s), LN, GELU, Linear(2D s, 2); CE
    ManagerTowerForImageTextRetrieval   itc_text_head.fc, itc_image_head.fc (Linear(D_text|D_vision, 256)),
                                        temperature (0.07, clamped to [0.001, 0.5]), itm_score; loss = itc + itm

(D = `config.hidden_size`, s = `config.head_hidden_scale`; the official key names are `vqa_classifier.{0,1,3}`,
`snli_classifier.*`, `nlvr2_classifier.*`, `itm_score.fc`, `mlm_score.{transform,decoder,bias}`, `temperature`;
the ITC heads are `cross_modal_itc_{text,image}_head.fc` there.) The heads are the same code for every
`manager_type`, "bridge" included, so BridgeTower and ManagerTower compare under one implementation. New layers are
initialised as BridgeTower's (`_init_weights`: Linear N(0, 0.05 * initializer_factor), zero bias, LayerNorm 1 / 0);
the official code used N(0, 0.02).

`retrieval_scores(model, image_batches, text_batches, k)` is the official Flickr30K evaluation
(`compute_irtr_itm_itc_recall`): ITC similarities for every image-text pair, the top k of each image and of each
text re-scored by the ITM positive logit, -100 elsewhere, the elementwise max of the two; `metrics.retrieval_recall`
turns the matrix into TR@k / IR@k.

One module a concern:

- `base.py`: the outputs (`ManagerTowerTaskOutput`, `ManagerTowerPreTrainingOutput`, `ManagerTowerRetrievalOutput`),
  `_TaskModel` (the backbone and the helpers that run it), `classifier` and `head_width`.
- `pretraining.py`: `ManagerTowerForMaskedLM`, `ManagerTowerForImageTextMatching`, `ManagerTowerForPreTraining`.
- `classification.py`: `ManagerTowerForQuestionAnswering`, `ManagerTowerForVisualEntailment`, `ManagerTowerForNLVR2`.
- `retrieval.py`: `ManagerTowerForImageTextRetrieval`, `sample_negatives`, `retrieval_scores`.
"""

from .base import (
    ManagerTowerPreTrainingOutput,
    ManagerTowerRetrievalOutput,
    ManagerTowerTaskOutput,
    classifier,
    head_width,
)
from .classification import (
    NLVR2_CLASSES,
    SNLI_VE_CLASSES,
    ManagerTowerForNLVR2,
    ManagerTowerForQuestionAnswering,
    ManagerTowerForVisualEntailment,
)
from .pretraining import (
    IGNORE_INDEX,
    ManagerTowerForImageTextMatching,
    ManagerTowerForMaskedLM,
    ManagerTowerForPreTraining,
)
from .retrieval import (
    ITC_TEMPERATURE,
    NOT_RANKED,
    TEMPERATURE_RANGE,
    ManagerTowerForImageTextRetrieval,
    retrieval_scores,
    sample_negatives,
)

__all__ = [
    "ManagerTowerForImageTextMatching",
    "ManagerTowerForImageTextRetrieval",
    "ManagerTowerForMaskedLM",
    "ManagerTowerForNLVR2",
    "ManagerTowerForPreTraining",
    "ManagerTowerForQuestionAnswering",
    "ManagerTowerForVisualEntailment",
    "ManagerTowerPreTrainingOutput",
    "ManagerTowerRetrievalOutput",
    "ManagerTowerTaskOutput",
    "retrieval_scores",
    "sample_negatives",
]
