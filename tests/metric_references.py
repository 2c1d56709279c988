"""Independent computations of every classification metric, for the metric tests: formulas written
here (never the scikit-learn call a metric makes, which a test could not fail against), and the
random cases they are checked on."""

import numpy as np


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_case(n, c, seed, class_probs=None, classes=None, never_predicted=()):
    """Labels drawn from `classes` (default all) with `class_probs`; probabilities mildly correlated with labels;
    the classes `never_predicted` never have the highest probability."""
    rng = np.random.default_rng(seed)
    classes = np.arange(c) if classes is None else np.asarray(classes)
    y = rng.choice(classes, size=n, p=class_probs)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    logits[:, list(never_predicted)] -= 20.0
    return y, softmax(logits).astype(np.float32)


# random_case settings that the metric tests share
CASES = {
    "balanced": dict(n=200, c=6, seed=1),
    "imbalanced": dict(n=300, c=4, seed=2, class_probs=[0.8, 0.15, 0.04, 0.01]),
    "absent_class": dict(n=150, c=5, seed=3, classes=[0, 1, 3], class_probs=[0.5, 0.3, 0.2]),
    "many_classes": dict(n=400, c=12, seed=4),
    "binary": dict(n=100, c=3, seed=5, classes=[0, 2]),
    "class_in_neither": dict(n=150, c=5, seed=6, classes=[0, 1, 2], never_predicted=[4]),
}



def hand_macro_f1(y, pred):
    classes = np.union1d(np.unique(y), np.unique(pred))
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def hand_balanced_accuracy(y, pred):
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def hand_top_k(y, prob, k):
    top = np.argsort(-prob, axis=1)[:, :k]
    return float(np.mean([y[i] in top[i] for i in range(len(y))]))


def per_class_scores(y, pred, c):
    """Precision, recall and F1 of class c, 0 where undefined (scikit-learn's zero_division=0)."""
    tp = np.sum((pred == c) & (y == c))
    fp = np.sum((pred == c) & (y != c))
    fn = np.sum((pred != c) & (y == c))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def hand_macro(y, pred, which):
    """Macro average over the classes that are labels or predictions (the others are left out)."""
    return float(np.mean([per_class_scores(y, pred, c)[which] for c in np.union1d(y, pred)]))


def hand_weighted(y, pred, which):
    """Support-weighted precision, recall or F1: sum over true classes of support * score / N."""
    return float(sum(np.sum(y == c) * per_class_scores(y, pred, c)[which] for c in np.unique(y)) / len(y))


def hand_binary_auc(positive, scores):
    """ROC-AUC as the Mann-Whitney statistic: the share of (positive, negative) pairs the scores order
    right, a tie counting one half."""
    pos, neg = scores[positive], scores[~positive]
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


def hand_roc_auc(y, scores):
    """One-vs-rest macro over the classes present in y; for two classes, the AUC of class 1."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if scores.shape[1] == 2:
        return hand_binary_auc(y == 1, scores[:, 1])
    return float(np.mean([hand_binary_auc(y == c, scores[:, c]) for c in present]))


def tie_positions(scores, true_class):
    """1-based positions the true class can occupy when the classes are sorted by score, best first:
    after every class that scores higher, anywhere within the block of classes tied with it."""
    ordered = np.sort(scores)[::-1]
    first = int(np.searchsorted(-ordered, -scores[true_class], side="left"))
    last = int(np.searchsorted(-ordered, -scores[true_class], side="right"))
    return np.arange(first + 1, last + 1)


def hand_mrr(y, prob):
    # a tie is counted against the model: the true class takes the last tied position
    return float(np.mean([1.0 / tie_positions(prob[i], y[i])[-1] for i in range(len(y))]))


def hand_ndcg(y, prob):
    # one relevant class: DCG = 1/log2(1 + position), ideal DCG = 1; a tie gets its block's mean discount
    return float(np.mean([np.mean(1.0 / np.log2(1.0 + tie_positions(prob[i], y[i]))) for i in range(len(y))]))


def hand_average_precision(relevant, scores):
    """Average precision of one ranked list, any number of relevant items, ties counted pessimistically:
    mean over relevant items r of (relevant items scoring >= r) / (items scoring >= r)."""
    relevant = np.asarray(relevant, dtype=bool)
    return float(np.mean([np.sum(relevant & (scores >= s)) / np.sum(scores >= s) for s in scores[relevant]]))


def hand_map(y, prob):
    """Mean over the classes present in y of each class's average precision: the images ranked by that
    class's score, its own images the relevant ones."""
    return float(np.mean([hand_average_precision(y == c, prob[:, c]) for c in np.unique(y)]))


def one_hot(y, c):
    return np.eye(c, dtype=int)[y]


def argmax_reference(formula):
    return lambda y, prob: formula(y, prob.argmax(axis=1))


# An independent computation of every metric: a formula written here, never the scikit-learn call the
# metric makes (a test against that call could not fail).
REFERENCES = {
    "accuracy": argmax_reference(lambda y, pred: float(np.mean(pred == y))),
    "balanced_accuracy": argmax_reference(hand_balanced_accuracy),
    "f1": argmax_reference(lambda y, pred: hand_macro(y, pred, "f1")),
    "f1_weighted": argmax_reference(lambda y, pred: hand_weighted(y, pred, "f1")),
    "precision": argmax_reference(lambda y, pred: hand_macro(y, pred, "precision")),
    "precision_weighted": argmax_reference(lambda y, pred: hand_weighted(y, pred, "precision")),
    "recall": argmax_reference(lambda y, pred: hand_macro(y, pred, "recall")),
    "recall_weighted": argmax_reference(lambda y, pred: hand_weighted(y, pred, "recall")),
    "roc_auc": hand_roc_auc,
    "top3": lambda y, prob: hand_top_k(y, prob, min(3, prob.shape[1])),
    "top5": lambda y, prob: hand_top_k(y, prob, min(5, prob.shape[1])),
    "mrr": hand_mrr,
    "ndcg": hand_ndcg,
    "map": hand_map,
}


def reference(name, y, prob):
    return REFERENCES[name](y, prob)


def np_log_softmax(x):
    shifted = np.asarray(x, dtype=np.float64) - np.max(x, axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
