"""Document functions of the shapes tasks (colour questions on small synthetic images, in shapes.parquet)."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_target(doc):
    return doc["answer"]


def doc_to_choice(doc):
    return list(doc["choices"])
