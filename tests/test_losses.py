"""Unit tests of trainer.parts.losses against torch and independent numpy formulas."""

import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.class_weight import compute_class_weight

from trainer.config.registry import build
from trainer.errors import UserError
from trainer.parts.losses import LOSSES

C = 5


def schema_defaults(name):
    """The option values a config of this loss holds when the command line sets none (the schema's)."""
    from trainer.config.options import SCHEMAS

    return dataclasses.asdict(SCHEMAS["loss"][name]()) if name in SCHEMAS["loss"] else {"name": name}


def make_loss(name, num_classes=C, train_labels=None, **options):
    return build(LOSSES, {**schema_defaults(name), **options}, num_classes=num_classes, train_labels=train_labels)


def random_batch(n=32, c=C, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen) * scale
    target = torch.randint(0, c, (n,), generator=gen)
    target[:c] = torch.arange(c)  # every class appears at least once
    return logits, target


def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


WEIGHTS = [0.5, 2.0, 1.0, 3.0, 0.25]


# --- cross-entropy ---------------------------------------------------------------------------
def numpy_ce(logits, q, s=0.0, weights=None):
    """torch's cross-entropy written out for target rows q: the smoothed target (1-s) q + s/C, each
    class's term weighted by w_c, the sum divided by sum_i sum_c w_c q_ic (sum_i w[y_i] when one-hot)."""
    log_p = np_log_softmax(logits)
    c = log_p.shape[1]
    w = np.ones(c) if weights is None else np.asarray(weights, dtype=np.float64)
    t = (1 - s) * q + s / c
    return float(-(t * w * log_p).sum() / (q @ w).sum())


def onehot(target, c=C):
    return np.eye(c)[np.asarray(target)]


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_matches_the_formula(weights, smoothing):
    logits, target = random_batch()
    loss = make_loss("ce", weights=weights, label_smoothing=smoothing)(logits, target)
    assert loss.item() == pytest.approx(numpy_ce(logits, onehot(target), smoothing, weights), rel=1e-5)


# --- focal -----------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_focal_gamma_zero_is_cross_entropy(weights):
    logits, target = random_batch(seed=1)
    loss = make_loss("focal", gamma=0.0, weights=weights)(logits, target)
    w = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(logits, target, weight=w)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-7)


def numpy_focal(logits, target, gamma, weights=None):
    log_p = np_log_softmax(logits.numpy())
    idx = np.arange(len(target))
    y = target.numpy()
    log_py = log_p[idx, y]
    p_y = np.exp(log_py)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)[y]
    return float(np.sum(-w * (1 - p_y) ** gamma * log_py) / np.sum(w))


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_focal_matches_independent_formula(gamma, weights):
    logits, target = random_batch(seed=2)
    loss = make_loss("focal", gamma=gamma, weights=weights)(logits, target)
    assert loss.item() == pytest.approx(numpy_focal(logits, target, gamma, weights), rel=1e-5, abs=1e-7)


def test_focal_gamma_two_is_smaller_than_ce_and_differs():
    logits, target = random_batch(seed=3)
    focal = make_loss("focal", gamma=2.0)(logits, target).item()
    ce = F.cross_entropy(logits, target).item()
    assert 0 < focal < ce


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 16),
    c=st.integers(2, 7),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 30.0),
    weighted=st.booleans(),
)
def test_property_focal_gamma_zero_equals_ce(n, c, seed, scale, weighted):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen) * scale
    target = torch.randint(0, c, (n,), generator=gen)
    weights = (torch.rand(c, generator=gen) + 0.1).tolist() if weighted else None
    loss = make_loss("focal", num_classes=c, gamma=0.0, weights=weights)(logits, target)
    expected = F.cross_entropy(logits, target, weight=None if weights is None else torch.tensor(weights))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 16),
    c=st.integers(2, 7),
    seed=st.integers(0, 2**31 - 1),
    gamma=st.floats(0.0, 5.0),
)
def test_property_focal_matches_formula(n, c, seed, gamma):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen) * 3
    target = torch.randint(0, c, (n,), generator=gen)
    loss = make_loss("focal", num_classes=c, gamma=gamma)(logits, target)
    assert loss.item() == pytest.approx(numpy_focal(logits, target, gamma), rel=1e-5, abs=1e-6)


# --- label smoothing (lecture version) -------------------------------------------------------
def numpy_lecture_smoothing(logits, target, s, weights=None):
    log_p = np_log_softmax(logits.numpy())
    n, c = log_p.shape
    q = np.full((n, c), s / (c - 1))
    q[np.arange(n), target.numpy()] = 1 - s
    per_sample = -(q * log_p).sum(axis=1)
    if weights is None:
        return float(per_sample.mean())
    w = np.asarray(weights, dtype=np.float64)[target.numpy()]
    return float((w * per_sample).sum() / w.sum())


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("s", [0.0, 0.1, 0.3, 0.9])
def test_label_smoothing_matches_lecture_formula(s, weights):
    logits, target = random_batch(seed=4)
    loss = make_loss("label_smoothing", smoothing=s, weights=weights)(logits, target)
    assert loss.item() == pytest.approx(numpy_lecture_smoothing(logits, target, s, weights), rel=1e-5)


def test_label_smoothing_zero_is_cross_entropy_weighted():
    logits, target = random_batch(seed=5)
    loss = make_loss("label_smoothing", smoothing=0.0, weights=WEIGHTS)(logits, target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(WEIGHTS))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c", [2, 5, 10])
@pytest.mark.parametrize("s", [0.1, 0.4])
def test_lecture_smoothing_differs_from_torch_and_relation(c, s):
    logits, target = random_batch(n=40, c=c, seed=6)
    torch_ls = F.cross_entropy(logits, target, label_smoothing=s).item()
    lecture_same_s = make_loss("label_smoothing", num_classes=c, smoothing=s)(logits, target).item()
    assert abs(lecture_same_s - torch_ls) > 1e-4
    # torch spreads s over all C classes: true class 1-s+s/C, others s/C, which is the lecture's
    # target with s' = s*(C-1)/C.
    s_prime = s * (c - 1) / c
    lecture_equiv = make_loss("label_smoothing", num_classes=c, smoothing=s_prime)(logits, target).item()
    assert lecture_equiv == pytest.approx(torch_ls, rel=1e-5)
    assert numpy_lecture_smoothing(logits, target, s_prime) == pytest.approx(torch_ls, rel=1e-5)


# --- soft F1 ---------------------------------------------------------------------------------
def numpy_soft_f1_loss(logits, target, c, eps=1e-7):
    """target: integer labels, or rows of class probabilities in place of the one-hot rows."""
    p = np.exp(np_log_softmax(logits.numpy()))
    q = np.asarray(target, dtype=np.float64) if np.asarray(target).ndim == 2 else np.eye(c)[target.numpy()]
    tp = (q * p).sum(axis=0)
    fp = ((1 - q) * p).sum(axis=0)
    fn = (q * (1 - p)).sum(axis=0)
    precision = tp / (tp + fp + eps)
    recall = tp / (tp + fn + eps)
    f1 = 2 * precision * recall / (precision + recall + eps)
    return float(1 - np.clip(f1, eps, 1 - eps).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [1e-7, 1e-3])
def test_f1_loss_matches_independent_soft_f1(seed, eps):
    logits, target = random_batch(seed=seed)
    loss = make_loss("f1", epsilon=eps)(logits, target).item()
    assert loss == pytest.approx(numpy_soft_f1_loss(logits, target, C, eps), rel=1e-5, abs=1e-6)
    assert 0 < loss < 1


def test_f1_loss_of_perfect_confident_logits_is_near_zero():
    target = torch.tensor([0, 1, 2, 3, 4, 2, 1])
    logits = F.one_hot(target, C).float() * 50.0
    assert make_loss("f1")(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    # and all wrong is near 1
    wrong = F.one_hot((target + 1) % C, C).float() * 50.0
    assert make_loss("f1")(wrong, target).item() == pytest.approx(1.0, abs=1e-5)


# --- class weights ---------------------------------------------------------------------------
def test_balanced_weights_equal_sklearn():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 5 + [3] * 3 + [4] * 22)
    np.random.default_rng(0).shuffle(labels)
    expected = compute_class_weight("balanced", classes=np.arange(C), y=labels)
    for name in ["ce", "focal", "label_smoothing"]:
        loss = make_loss(name, weights="balanced", train_labels=labels.tolist())
        np.testing.assert_allclose(loss.weight.numpy(), expected, rtol=1e-6)
    # and the weights are used: ce with balanced weights equals torch's weighted CE
    logits, target = random_batch(seed=7)
    loss = make_loss("ce", weights="balanced", train_labels=labels)(logits, target)
    torch.testing.assert_close(
        loss, F.cross_entropy(logits, target, weight=torch.tensor(expected, dtype=torch.float32)), rtol=1e-6, atol=1e-7
    )


def test_balanced_weights_with_missing_class_raise():
    with pytest.raises(UserError, match=r"loss.weights=balanced.*missing: \[3\]"):
        make_loss("ce", weights="balanced", train_labels=[0, 1, 2, 4, 0, 1])


def test_no_weights_gives_none():
    assert make_loss("ce").weight is None
    assert make_loss("focal").weight is None


@pytest.mark.parametrize("name", ["ce", "focal", "label_smoothing"])
def test_wrong_weights_string_raises(name):
    with pytest.raises(UserError, match=r"loss\.weights='inverse'"):
        make_loss(name, weights="inverse", train_labels=[0, 1, 2, 3, 4])


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0] * (C + 1), []])
@pytest.mark.parametrize("name", ["ce", "focal", "label_smoothing"])
def test_wrong_count_of_weights_raises(name, weights):
    with pytest.raises(UserError, match=r"loss\.weights.*5 non-negative numbers, one per class"):
        make_loss(name, weights=weights)


def test_negative_weight_raises():
    with pytest.raises(UserError, match=r"loss\.weights"):
        make_loss("ce", weights=[1.0, -1.0, 1.0, 1.0, 1.0])


def test_scalar_weights_raise_user_error():
    # `loss.weights=2` on the command line: a user mistake, should be a UserError naming loss.weights.
    with pytest.raises(UserError, match=r"loss\.weights"):
        make_loss("ce", weights=2.0)


@pytest.mark.parametrize("gamma", [-0.5, -2])
def test_negative_gamma_raises(gamma):
    with pytest.raises(UserError, match=r"loss\.gamma"):
        make_loss("focal", gamma=gamma)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5])
def test_smoothing_out_of_range_raises(s):
    with pytest.raises(UserError, match=r"loss\.smoothing"):
        make_loss("label_smoothing", smoothing=s)
    with pytest.raises(UserError, match=r"loss\.label_smoothing"):
        make_loss("ce", label_smoothing=s)


def test_unknown_option_raises_naming_key():
    with pytest.raises(UserError, match=r"does not take gama"):
        make_loss("focal", gama=2.0)


# --- numerical stability ---------------------------------------------------------------------
EXTREME_CASES = [
    ("ce", {}),
    ("ce", {"weights": "balanced", "label_smoothing": 0.2}),
    ("focal", {}),
    ("focal", {"gamma": 0.0}),
    ("focal", {"gamma": 0.5}),
    ("focal", {"gamma": 1.0, "weights": "balanced"}),
    ("label_smoothing", {}),
    ("label_smoothing", {"smoothing": 0.3, "weights": "balanced"}),
    ("f1", {}),
]


def test_extreme_cases_cover_every_registered_loss():
    assert {name for name, _ in EXTREME_CASES} == set(LOSSES.names())


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize("name,options", EXTREME_CASES, ids=lambda v: v if isinstance(v, str) else str(v))
def test_gradients_finite_on_extreme_logits(name, options, soft):
    labels = [0, 1, 2, 3, 4]
    loss_fn = make_loss(name, train_labels=labels, **options)
    big = 1e4
    logits = torch.tensor(
        [
            [big, -big, 0.0, -big, big / 2],  # confidently right
            [big, -big, 0.0, -big, big / 2],  # confidently wrong (target 1)
            [-big, -big, -big, -big, -big],  # all equal, large magnitude
            [big, big, -big, -big, -big],  # tie between two classes
            [-big, -big, -big, -big, big],  # right, last class
            [0.0, 0.0, big, 0.0, 0.0],  # wrong
        ],
        requires_grad=True,
    )
    target = torch.tensor([0, 1, 2, 0, 4, 3])
    if soft:  # mixup of each row's label with the next row's, 0.7/0.3, as a mixup batch would carry
        target = 0.7 * F.one_hot(target, C).float() + 0.3 * F.one_hot(target.roll(1), C).float()
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all(), logits.grad


# --- soft targets (mixup / cutmix) -----------------------------------------------------------
def mixed_targets(target, seed=0, smoothing=0.0, c=C):
    """Rows as timm's Mixup makes them: each label smoothed (1-s+s/C on it, s/C elsewhere), mixed with
    the label of the batch flipped, with a random weight per row (mixup_mode=elem)."""
    rng = np.random.default_rng(seed)
    smooth = onehot(target, c) * (1 - smoothing) + smoothing / c
    lam = rng.uniform(0.2, 0.8, size=(len(target), 1))
    return lam * smooth + (1 - lam) * smooth[::-1]


def numpy_soft_focal(logits, q, gamma, weights=None):
    log_p = np_log_softmax(logits.numpy())
    w = np.ones(q.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((q * w * (1 - np.exp(log_p)) ** gamma * -log_p).sum() / (q @ w).sum())


def numpy_soft_lecture_smoothing(logits, q, s, weights=None):
    log_p = np_log_softmax(logits.numpy())
    c = q.shape[1]
    t = (1 - s) * q + s / (c - 1) * (1 - q)
    per_sample = -(t * log_p).sum(axis=1)
    v = q.sum(axis=1) if weights is None else q @ np.asarray(weights, dtype=np.float64)
    return float((v * per_sample).sum() / v.sum())


SOFT_CASES = [
    ("ce", {}, lambda logits, q: numpy_ce(logits, q)),
    ("ce", {"label_smoothing": 0.2, "weights": WEIGHTS}, lambda logits, q: numpy_ce(logits, q, 0.2, WEIGHTS)),
    ("focal", {"gamma": 2.0}, lambda logits, q: numpy_soft_focal(logits, q, 2.0)),
    ("focal", {"gamma": 1.5, "weights": WEIGHTS}, lambda logits, q: numpy_soft_focal(logits, q, 1.5, WEIGHTS)),
    ("label_smoothing", {"smoothing": 0.1}, lambda logits, q: numpy_soft_lecture_smoothing(logits, q, 0.1)),
    ("label_smoothing", {"smoothing": 0.3, "weights": WEIGHTS},
     lambda logits, q: numpy_soft_lecture_smoothing(logits, q, 0.3, WEIGHTS)),
    ("f1", {"epsilon": 1e-7}, lambda logits, q: numpy_soft_f1_loss(logits, q, C)),
]


def test_soft_cases_cover_every_registered_loss():
    assert {name for name, _, _ in SOFT_CASES} == set(LOSSES.names())


@pytest.mark.parametrize("name,options,formula", SOFT_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_one_hot_soft_targets_give_the_integer_label_loss(name, options, formula):
    logits, target = random_batch(seed=11)
    loss_fn = make_loss(name, **options)
    hard = loss_fn(logits, target)
    soft = loss_fn(logits, F.one_hot(target, C).float())
    torch.testing.assert_close(soft, hard, rtol=1e-6, atol=1e-7)
    assert hard.item() == pytest.approx(formula(logits, onehot(target)), rel=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("name,options,formula", SOFT_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_mixed_soft_targets_match_the_formula(name, options, formula, smoothing):
    logits, target = random_batch(seed=12)
    q = mixed_targets(target, smoothing=smoothing)
    loss = make_loss(name, **options)(logits, torch.tensor(q, dtype=torch.float32))
    assert loss.item() == pytest.approx(formula(logits, q), rel=1e-5)
    # a mixed target is a different target: the loss is not the one of either image's label alone
    assert abs(loss.item() - make_loss(name, **options)(logits, target).item()) > 1e-3


def test_soft_ce_without_options_is_timms_soft_target_cross_entropy():
    from timm.loss import SoftTargetCrossEntropy

    logits, target = random_batch(seed=13)
    q = torch.tensor(mixed_targets(target, smoothing=0.1), dtype=torch.float32)
    torch.testing.assert_close(make_loss("ce")(logits, q), SoftTargetCrossEntropy()(logits, q), rtol=1e-6, atol=1e-6)


def test_mixed_rows_weigh_as_the_mix_of_their_classes_weights():
    # two images of classes 0 (weight 0.5) and 3 (weight 3.0) mixed 0.25/0.75 weigh 0.25*0.5 + 0.75*3.0
    logits = torch.randn(2, C, generator=torch.Generator().manual_seed(14))
    q = torch.zeros(2, C)
    q[0, 0], q[0, 3], q[1, 1] = 0.25, 0.75, 1.0
    log_p = torch.log_softmax(logits, dim=1)
    mixed_weight = 0.25 * WEIGHTS[0] + 0.75 * WEIGHTS[3]
    term0 = -(0.25 * WEIGHTS[0] * log_p[0, 0] + 0.75 * WEIGHTS[3] * log_p[0, 3])
    expected = (term0 - WEIGHTS[1] * log_p[1, 1]) / (mixed_weight + WEIGHTS[1])
    torch.testing.assert_close(make_loss("ce", weights=WEIGHTS)(logits, q), expected, rtol=1e-6, atol=1e-7)


def test_soft_targets_of_the_wrong_shape_are_refused():
    logits, _ = random_batch()
    with pytest.raises(ValueError, match=r"soft targets must have shape \(N, 5\)"):
        make_loss("focal")(logits, torch.full((len(logits), C + 1), 1 / (C + 1)))


# --- regression losses -----------------------------------------------------------------------
from trainer.parts.losses import REGRESSION_LOSSES  # noqa: E402


def make_regression_loss(name, **options):
    return build(REGRESSION_LOSSES, {**schema_defaults(name), **options})


def numpy_regression_loss(name, prediction, target, delta=1.0):
    error = np.asarray(prediction, dtype=np.float64).reshape(-1) - np.asarray(target, dtype=np.float64)
    if name == "mse":
        return float(np.mean(error**2))
    if name == "l1":
        return float(np.mean(np.abs(error)))
    if name == "huber":
        small = np.abs(error) <= delta
        return float(np.mean(np.where(small, 0.5 * error**2, delta * (np.abs(error) - 0.5 * delta))))
    raise AssertionError(f"no reference for regression loss {name}; add one")


def numpy_regression_gradient(name, prediction, target, delta=1.0):
    """d loss / d prediction of the batch mean."""
    error = np.asarray(prediction, dtype=np.float64).reshape(-1) - np.asarray(target, dtype=np.float64)
    if name == "mse":
        return 2 * error / len(error)
    if name == "l1":
        return np.sign(error) / len(error)
    return np.clip(error, -delta, delta) / len(error)


TORCH_REGRESSION = {
    "mse": lambda p, t, delta: F.mse_loss(p, t),
    "l1": lambda p, t, delta: F.l1_loss(p, t),
    "huber": lambda p, t, delta: F.huber_loss(p, t, delta=delta),
}


def test_regression_loss_names():
    assert REGRESSION_LOSSES.names() == ["huber", "l1", "mse"] == sorted(TORCH_REGRESSION)
    assert not set(REGRESSION_LOSSES.names()) & set(LOSSES.names())


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(TORCH_REGRESSION)),
    n=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
    delta=st.floats(0.05, 5.0),
    column=st.booleans(),
)
def test_property_regression_losses(name, n, seed, scale, delta, column):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(n, generator=gen) * scale
    prediction = target + torch.randn(n, generator=gen) * scale
    options = {"delta": delta} if name == "huber" else {}
    loss_fn = make_regression_loss(name, **options)
    loss = loss_fn(prediction.unsqueeze(1) if column else prediction, target)
    assert loss.shape == ()
    torch.testing.assert_close(loss, TORCH_REGRESSION[name](prediction, target, delta), rtol=1e-6, atol=1e-6)
    assert loss.item() == pytest.approx(numpy_regression_loss(name, prediction, target, delta), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", sorted(TORCH_REGRESSION))
def test_regression_loss_of_a_column_is_not_broadcast(name):
    # (N, 1) against (N,) would broadcast to (N, N) in torch itself; here it is the (N,) loss
    prediction = torch.tensor([[1.0], [2.0], [4.0]])
    target = torch.tensor([0.0, 0.0, 10.0])
    loss = make_regression_loss(name)(prediction, target)
    assert loss.item() == pytest.approx(numpy_regression_loss(name, prediction, target), rel=1e-6)
    with pytest.warns(UserWarning):  # torch's own warning about the broadcast
        broadcast = TORCH_REGRESSION[name](prediction, target, 1.0)
    assert loss.item() != pytest.approx(broadcast.item())


@pytest.mark.parametrize("name", sorted(TORCH_REGRESSION))
@pytest.mark.parametrize("shapes", [((4, 2), (4,)), ((4,), (5,)), ((4, 1), (5,)), ((4, 1, 1), (4,))])
def test_regression_loss_refuses_mismatched_shapes(name, shapes):
    prediction_shape, target_shape = shapes
    with pytest.raises(ValueError, match=r"do not match targets of shape"):
        make_regression_loss(name)(torch.zeros(prediction_shape), torch.zeros(target_shape))


@pytest.mark.parametrize("name", sorted(TORCH_REGRESSION))
def test_regression_loss_takes_integer_and_double_inputs(name):
    prediction = torch.tensor([0.5, 2.0, 3.5], dtype=torch.float64)
    target = torch.tensor([1, 2, 3])
    loss = make_regression_loss(name)(prediction, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(numpy_regression_loss(name, prediction, target), rel=1e-6)


@pytest.mark.parametrize("delta", [0.1, 1.0, 3.0])
def test_huber_is_quadratic_inside_delta_and_linear_outside(delta):
    target = torch.zeros(2)
    inside = make_regression_loss("huber", delta=delta)(torch.tensor([delta / 2, -delta / 2]), target)
    outside = make_regression_loss("huber", delta=delta)(torch.tensor([3 * delta, -3 * delta]), target)
    assert inside.item() == pytest.approx(0.5 * (delta / 2) ** 2)
    assert outside.item() == pytest.approx(delta * (3 * delta - 0.5 * delta))
    # at delta=1, Huber is smooth L1 (beta=1)
    if delta == 1.0:
        prediction = torch.linspace(-3, 3, 13)
        torch.testing.assert_close(
            make_regression_loss("huber")(prediction, torch.zeros(13)), F.smooth_l1_loss(prediction, torch.zeros(13))
        )


@pytest.mark.parametrize("delta", [0.0, -1.0])
def test_huber_delta_must_be_positive(delta):
    with pytest.raises(UserError, match=r"loss\.delta=.* is not valid; use a number > 0"):
        make_regression_loss("huber", delta=delta)


@pytest.mark.parametrize("name, options", [("mse", {}), ("l1", {}), ("huber", {"delta": 0.5}), ("huber", {})])
def test_regression_gradients_finite_and_right_on_extreme_inputs(name, options):
    # errors from 0 to 1e6 (mse of 1e12 is still finite in float32), both signs, exact zeros
    prediction = torch.tensor([0.0, 1e6, -1e6, 3.0, -2.5, 1e-8, 7.0], requires_grad=True)
    target = torch.tensor([0.0, -1e6, 1e6, 3.0, 0.0, 0.0, -1e5])
    loss = make_regression_loss(name, **options)(prediction.unsqueeze(1), target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(prediction.grad).all(), prediction.grad
    expected = numpy_regression_gradient(name, prediction.detach(), target, options.get("delta", 1.0))
    np.testing.assert_allclose(prediction.grad.numpy(), expected, rtol=1e-5, atol=1e-12)


def test_unknown_regression_loss_option_raises_naming_key():
    with pytest.raises(UserError, match=r"does not take deltaa; it takes: delta"):
        make_regression_loss("huber", deltaa=1.0)
    with pytest.raises(UserError, match=r"unknown regression loss 'ce'; choose one of: huber, l1, mse"):
        make_regression_loss("ce")


# --- the loss options in conf/loss -----------------------------------------------------------
def compose_train(*overrides):
    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from trainer.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("option, expected", [
    ("mse", {"name": "mse"}),
    ("l1", {"name": "l1"}),
    ("huber", {"name": "huber", "delta": 1.0}),
])
def test_regression_loss_options_compose_and_build(option, expected):
    from omegaconf import OmegaConf

    loss_cfg = OmegaConf.to_container(compose_train(f"loss={option}").loss)
    assert loss_cfg == expected
    assert isinstance(build(REGRESSION_LOSSES, loss_cfg), torch.nn.Module)


def test_huber_delta_from_the_command_line():
    from omegaconf import OmegaConf

    cfg = compose_train("loss=huber", "loss.delta=0.25")
    loss_fn = build(REGRESSION_LOSSES, OmegaConf.to_container(cfg.loss))
    prediction, target = torch.tensor([0.0, 2.0]), torch.zeros(2)
    assert loss_fn(prediction, target).item() == pytest.approx(numpy_regression_loss("huber", prediction, target, 0.25))


@pytest.mark.parametrize("override", ["loss.delt=1", "loss.delta=abc"])
def test_huber_option_is_checked_by_its_schema(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
        compose_train("loss=huber", override)


def test_every_loss_option_names_a_registered_loss():
    from conftest import REPO

    options = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))
    assert options == sorted(LOSSES.names() + REGRESSION_LOSSES.names())
