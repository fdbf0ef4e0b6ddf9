"""SDM, ITC and ID losses: hand-computed values, invariances, precision under bf16, input errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from promptdecouple.objectives import (
    LOSS_NAMES,
    SDM_EPSILON,
    id_loss,
    itc_loss,
    sdm_loss,
    validate_loss_names,
)

EPS = 1e-8

# 2x2 example: the rows are deliberately not unit length (the losses normalise inside).
# Unit vectors: images e1, e2; texts e1, (0.6, 0.8). Cosines S = [[1, 0.6], [0, 0.8]].
IMAGES_2 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
TEXTS_2 = torch.tensor([[5.0, 0.0], [3.0, 4.0]])

# 3x3 example: images 2*e1, 3*e2, 4*e3; texts e1, (0.6, 0.8, 0), (0, 0.6, 0.8) scaled.
# Cosines S[i, j] = texts_unit[j][i] = [[1, 0.6, 0], [0, 0.8, 0.6], [0, 0, 0.8]].
IMAGES_3 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
TEXTS_3 = torch.tensor([[7.0, 0.0, 0.0], [1.2, 1.6, 0.0], [0.0, 3.0, 4.0]])
COSINES_3 = [[1.0, 0.6, 0.0], [0.0, 0.8, 0.6], [0.0, 0.0, 0.8]]


def _softmax(row):
    total = sum(math.exp(x) for x in row)
    return [math.exp(x) / total for x in row]


def _kl_to_target(row_logits, row_target):
    """sum_j p_j * (log p_j - log(q_j + eps)), written out with math only."""
    p = _softmax(row_logits)
    return sum(pj * (math.log(pj) - math.log(qj + EPS)) for pj, qj in zip(p, row_target, strict=True))


def _scaled(matrix, temperature):
    return [[x / temperature for x in row] for row in matrix]


def _transposed(matrix):
    return [list(column) for column in zip(*matrix, strict=True)]


def _random_batch(batch_size=8, dim=16, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    texts = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    return images, texts


# ----------------------------------------------------------------------------- hand-computed values


def test_itc_2x2_by_hand():
    # Logits at temperature 0.5: images->texts [[2, 1.2], [0, 1.6]]; texts->images [[2, 0], [1.2, 1.6]].
    image_rows = (-2 + math.log(math.exp(2) + math.exp(1.2))) + (-1.6 + math.log(1 + math.exp(1.6)))
    text_rows = (-2 + math.log(math.exp(2) + 1)) + (-1.6 + math.log(math.exp(1.2) + math.exp(1.6)))
    expected = (image_rows / 2 + text_rows / 2) / 2  # mean over rows, then mean of the two directions
    assert itc_loss(IMAGES_2, TEXTS_2, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_sdm_2x2_distinct_ids_by_hand():
    # Distinct ids: target Q = identity. Row (a, b) with target index k:
    # p_k * log(p_k / (1 + eps)) + (1 - p_k) * log((1 - p_k) / eps).
    def row(p_on_target):
        p_off = 1 - p_on_target
        return p_on_target * math.log(p_on_target / (1 + EPS)) + p_off * math.log(p_off / EPS)

    i2t = (row(math.exp(2) / (math.exp(2) + math.exp(1.2))) + row(math.exp(1.6) / (1 + math.exp(1.6)))) / 2
    t2i = (row(math.exp(2) / (math.exp(2) + 1)) + row(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))) / 2
    loss = sdm_loss(IMAGES_2, TEXTS_2, torch.tensor([10, 20]), temperature=0.5)
    assert loss.item() == pytest.approx(i2t + t2i, abs=1e-5)


def test_sdm_2x2_same_id_by_hand():
    # One identity: Q = [[0.5, 0.5], [0.5, 0.5]], so each row costs sum_j p_j * log(p_j / 0.5) (eps ~ 0).
    def row(p0):
        return p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)

    i2t = (row(math.exp(2) / (math.exp(2) + math.exp(1.2))) + row(1 / (1 + math.exp(1.6)))) / 2
    t2i = (row(math.exp(2) / (math.exp(2) + 1)) + row(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))) / 2
    loss = sdm_loss(IMAGES_2, TEXTS_2, torch.tensor([4, 4]), temperature=0.5)
    assert loss.item() == pytest.approx(i2t + t2i, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.25, 0.02])
def test_sdm_3x3_shared_id_by_hand(temperature):
    # pids [7, 7, 9]: rows of samples 0 and 1 split the target between them; sample 2 is alone.
    target = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    i2t_logits = _scaled(COSINES_3, temperature)
    t2i_logits = _scaled(_transposed(COSINES_3), temperature)
    i2t = sum(_kl_to_target(r, q) for r, q in zip(i2t_logits, target, strict=True)) / 3
    t2i = sum(_kl_to_target(r, q) for r, q in zip(t2i_logits, target, strict=True)) / 3
    loss = sdm_loss(IMAGES_3, TEXTS_3, torch.tensor([7, 7, 9]), temperature=temperature)
    assert loss.item() == pytest.approx(i2t + t2i, abs=1e-5)


def test_sdm_uses_the_documented_epsilon():
    assert SDM_EPSILON == 1e-8
    # The eps term dominates for mass on non-matching pairs: doubling it lowers each such term by log 2.
    pids = torch.tensor([10, 20])
    base = sdm_loss(IMAGES_2, TEXTS_2, pids, temperature=0.5)
    doubled = sdm_loss(IMAGES_2, TEXTS_2, pids, temperature=0.5, epsilon=2e-8)
    p_off = [
        math.exp(1.2) / (math.exp(2) + math.exp(1.2)),
        1 / (1 + math.exp(1.6)),
        1 / (math.exp(2) + 1),
        math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)),
    ]
    expected_drop = math.log(2) * (sum(p_off[:2]) / 2 + sum(p_off[2:]) / 2)
    assert (base - doubled).item() == pytest.approx(expected_drop, abs=1e-5)


def test_id_loss_by_hand():
    image_logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    text_logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    pids = torch.tensor([2, 0])
    e = math.e
    image_ce = ((-3 + math.log(e + e**2 + e**3)) + math.log(3)) / 2
    text_ce = ((-1 + math.log(e**3 + e**2 + e)) + (-1 + math.log(e + 2))) / 2
    assert id_loss(image_logits, text_logits, pids).item() == pytest.approx(
        (image_ce + text_ce) / 2, abs=1e-6
    )


def test_aligned_features_distinct_ids_give_zero_sdm_and_itc():
    features = torch.eye(4) * 3
    assert sdm_loss(features, features, torch.arange(4)).item() == pytest.approx(0.0, abs=1e-6)
    assert itc_loss(features, features).item() == pytest.approx(0.0, abs=1e-6)


def test_sdm_does_not_reward_one_hot_matching_when_ids_are_shared():
    # Each image matches only its own caption, but images 0 and 1 show the same person: SDM wants the
    # probability split over both captions, so the one-hot prediction costs KL(onehot || [.5, .5]) = log 2
    # for each of the four rows of that identity, averaged over 4 rows, in each of the two directions.
    features = torch.eye(4) * 3
    loss = sdm_loss(features, features, torch.tensor([5, 5, 6, 7]))
    assert loss.item() == pytest.approx(2 * (2 * math.log(2)) / 4, abs=1e-5)


def test_batch_of_one():
    image, text = torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5]])
    assert itc_loss(image, text).item() == 0.0
    assert sdm_loss(image, text, torch.tensor([3])).item() == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------- invariances


def test_losses_are_symmetric_in_the_two_modalities():
    images, texts = _random_batch()
    pids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    assert sdm_loss(images, texts, pids).item() == pytest.approx(
        sdm_loss(texts, images, pids).item(), rel=1e-6
    )
    assert itc_loss(images, texts).item() == pytest.approx(itc_loss(texts, images).item(), rel=1e-6)
    logits_a, logits_b = _random_batch(dim=5, seed=1)
    pids = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    assert id_loss(logits_a, logits_b, pids).item() == pytest.approx(id_loss(logits_b, logits_a, pids).item())


def test_losses_do_not_depend_on_feature_scale():
    images, texts = _random_batch()
    pids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    row_scales = torch.linspace(0.01, 100.0, 8)[:, None]
    scaled_images, scaled_texts = images * row_scales, texts * row_scales.flip(0)
    assert sdm_loss(scaled_images, scaled_texts, pids).item() == pytest.approx(
        sdm_loss(images, texts, pids).item(), rel=1e-5
    )
    assert itc_loss(scaled_images, scaled_texts).item() == pytest.approx(
        itc_loss(images, texts).item(), rel=1e-5
    )


def test_losses_do_not_depend_on_batch_order_or_id_values():
    images, texts = _random_batch()
    pids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    order = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    reference = sdm_loss(images, texts, pids).item()
    assert sdm_loss(images[order], texts[order], pids[order]).item() == pytest.approx(reference, rel=1e-6)
    relabelled = (pids * 37 + 11000).to(torch.int32)
    assert sdm_loss(images, texts, relabelled).item() == pytest.approx(reference, rel=1e-6)
    assert itc_loss(images[order], texts[order]).item() == pytest.approx(
        itc_loss(images, texts).item(), rel=1e-6
    )


def test_sdm_targets_identities_not_pairs_while_itc_targets_pairs():
    # Swapping the captions of two samples of one identity keeps SDM (its target is per identity) but
    # changes ITC (its target is the diagonal).
    images, texts = _random_batch()
    pids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    swapped = texts[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])]
    assert sdm_loss(images, swapped, pids).item() == pytest.approx(
        sdm_loss(images, texts, pids).item(), rel=1e-6
    )
    assert abs(itc_loss(images, swapped).item() - itc_loss(images, texts).item()) > 1e-3
    # ...and it differs from treating every sample as its own identity.
    assert abs(sdm_loss(images, texts, pids).item() - sdm_loss(images, texts, torch.arange(8)).item()) > 1e-3


def test_sdm_is_a_divergence_bounded_below_by_the_epsilon_slack():
    for seed in range(5):
        images, texts = _random_batch(batch_size=16, seed=seed)
        pids = torch.randint(0, 6, (16,), generator=torch.Generator().manual_seed(seed))
        assert sdm_loss(images, texts, pids, temperature=0.1).item() >= -2 * math.log1p(16 * EPS) - 1e-6


# ----------------------------------------------------------------------------- gradients and precision


def test_gradients_match_finite_differences_in_float64():
    images, texts = _random_batch(batch_size=5, dim=4, dtype=torch.float64)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    pids = torch.tensor([1, 1, 2, 3, 3])
    assert torch.autograd.gradcheck(lambda a, b: sdm_loss(a, b, pids, temperature=0.3), (images, texts))
    assert torch.autograd.gradcheck(lambda a, b: itc_loss(a, b, temperature=0.3), (images, texts))
    logits_a, logits_b = _random_batch(batch_size=5, dim=3, seed=2, dtype=torch.float64)
    logits_a.requires_grad_(True)
    logits_b.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: id_loss(a, b, torch.tensor([0, 2, 1, 1, 0])), (logits_a, logits_b)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_are_finite_at_the_default_temperature(dtype):
    # Identical, near-duplicate and opposite features at logit scale 50 saturate the softmax.
    images = (
        torch.cat([torch.ones(4, 8), -torch.ones(2, 8), torch.randn(10, 8)]).to(dtype).requires_grad_(True)
    )
    texts = (
        torch.cat([torch.ones(4, 8) + 1e-3, torch.ones(2, 8), torch.randn(10, 8)])
        .to(dtype)
        .requires_grad_(True)
    )
    pids = torch.tensor([0, 0, 1, 2, 3, 3] + list(range(4, 14)))
    loss = sdm_loss(images, texts, pids) + itc_loss(images, texts)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(images.grad).all() and torch.isfinite(texts.grad).all()
    assert images.grad.dtype == dtype


def test_bf16_inputs_are_computed_in_float32():
    images, texts = _random_batch(batch_size=16, dim=32)
    pids = torch.arange(16) // 2
    bf_images, bf_texts = images.bfloat16(), texts.bfloat16()
    for loss_of in (
        lambda a, b: sdm_loss(a, b, pids),
        lambda a, b: itc_loss(a, b),
        lambda a, b: id_loss(a, b, pids),
    ):
        from_bf16 = loss_of(bf_images, bf_texts)
        assert from_bf16.dtype == torch.float32
        # Same as computing in float32 on the rounded inputs: only the input rounding differs.
        assert from_bf16.item() == pytest.approx(
            loss_of(bf_images.float(), bf_texts.float()).item(), rel=1e-6
        )
        assert from_bf16.item() == pytest.approx(loss_of(images, texts).item(), rel=2e-2)


def test_autocast_does_not_lower_the_precision_of_the_loss():
    # Under bf16-mixed, Lightning runs training_step in autocast, where a plain matmul would run in bf16
    # (cosines rounded to ~3 digits, then multiplied by 50).
    images, texts = _random_batch(batch_size=32, dim=64)
    pids = torch.arange(32) // 4
    expected = (
        sdm_loss(images, texts, pids).item(),
        itc_loss(images, texts).item(),
        id_loss(images, texts, pids).item(),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (sdm_loss(images, texts, pids), itc_loss(images, texts), id_loss(images, texts, pids))
    assert all(loss.dtype == torch.float32 for loss in got)
    assert [loss.item() for loss in got] == pytest.approx(expected, rel=1e-6)


def test_float64_inputs_stay_float64():
    images, texts = _random_batch(dtype=torch.float64)
    assert sdm_loss(images, texts, torch.arange(8)).dtype == torch.float64
    assert itc_loss(images, texts).dtype == torch.float64


def test_itc_matches_cross_entropy_on_cosine_logits():
    # Cross-check of the mean-of-two-directions convention against torch on explicitly built logits.
    images, texts = _random_batch()
    logits = F.normalize(images, dim=1) @ F.normalize(texts, dim=1).t() / 0.07
    targets = torch.arange(8)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    assert itc_loss(images, texts, temperature=0.07).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("images", "texts", "message"),
    [
        (torch.randn(4, 8), torch.randn(3, 8), "batch sizes differ"),
        (torch.randn(4, 8), torch.randn(4, 6), "columns"),
        (torch.randn(8), torch.randn(4, 8), "image_features must be 2-D"),
        (torch.randn(4, 8), torch.randn(4, 2, 4), "text_features must be 2-D"),
        (torch.ones(4, 8, dtype=torch.int64), torch.randn(4, 8), "image_features must be floating point"),
        (torch.randn(0, 8), torch.randn(0, 8), "empty"),
    ],
)
def test_bad_features_are_rejected(images, texts, message):
    with pytest.raises(ValueError, match=message):
        sdm_loss(images, texts, torch.arange(images.shape[0]))
    with pytest.raises(ValueError, match=message):
        itc_loss(images, texts)


@pytest.mark.parametrize("temperature", [0.0, -0.02, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(temperature):
    images, texts = _random_batch()
    with pytest.raises(ValueError, match="temperature"):
        sdm_loss(images, texts, torch.arange(8), temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        itc_loss(images, texts, temperature=temperature)


def test_bad_epsilon_is_rejected():
    images, texts = _random_batch()
    with pytest.raises(ValueError, match="epsilon"):
        sdm_loss(images, texts, torch.arange(8), epsilon=0.0)


@pytest.mark.parametrize(
    ("pids", "message"),
    [
        (torch.arange(7), r"shape \(8,\)"),
        (torch.arange(8)[:, None], r"shape \(8,\)"),
        (torch.arange(8).float(), "integer"),
        (torch.ones(8, dtype=torch.bool), "integer"),
    ],
)
def test_bad_pids_are_rejected(pids, message):
    images, texts = _random_batch()
    with pytest.raises(ValueError, match=message):
        sdm_loss(images, texts, pids)
    with pytest.raises(ValueError, match=message):
        id_loss(images, texts, pids)


def test_non_tensor_inputs_are_rejected():
    images, texts = _random_batch()
    with pytest.raises(TypeError, match="pids must be a torch.Tensor"):
        sdm_loss(images, texts, [0, 1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(TypeError, match="text_features must be a torch.Tensor"):
        itc_loss(images, texts.numpy())


def test_id_loss_rejects_logits_of_different_shapes():
    with pytest.raises(ValueError, match="image_logits has 5 columns but text_logits has 4"):
        id_loss(torch.randn(3, 5), torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        id_loss(torch.randn(3, 5), torch.randn(2, 5), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- loss names


def test_loss_names():
    assert LOSS_NAMES == ("sdm", "itc", "id")
    assert validate_loss_names(["sdm", "id"]) == ("sdm", "id")
    assert validate_loss_names("itc") == ("itc",)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ((), "stage2_losses is empty; give one or more of 'sdm', 'itc', 'id'"),
        (
            ("sdm", "mlm"),
            r"stage2_losses has unknown loss name\(s\) \['mlm'\]; valid choices: 'sdm', 'itc', 'id'",
        ),
        ("sdm+id", "unknown"),
        (("id", "sdm", "id"), r"\['id'\] more than once"),
    ],
)
def test_bad_loss_names_are_rejected(names, message):
    with pytest.raises(ValueError, match=message):
        validate_loss_names(names, "stage2_losses")


@pytest.mark.parametrize("loss", ["sdm", "itc"])
def test_the_mean_of_row_shares_is_the_whole_batch_loss_with_its_gradient(loss):
    """What each DDP process computes with global negatives: its rows against every column."""
    torch.manual_seed(0)
    image = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    text = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])

    def compute(rows=None):
        if loss == "sdm":
            return sdm_loss(image, text, pids, 0.1, rows=rows)
        return itc_loss(image, text, 0.1, rows=rows)

    whole = compute()
    (whole_image, whole_text) = torch.autograd.grad(whole, (image, text))
    shares = [compute(slice(r * 2, (r + 1) * 2)) for r in range(4)]  # 4 "processes" of 2 rows
    mean = torch.stack(shares).mean()
    torch.testing.assert_close(mean, whole)
    mean_image, mean_text = torch.autograd.grad(mean, (image, text))
    torch.testing.assert_close(mean_image, whole_image)
    torch.testing.assert_close(mean_text, whole_text)
    assert not torch.allclose(shares[0], shares[1])  # the shares really differ


def test_rows_must_be_a_consecutive_slice_of_the_batch():
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(TypeError, match="slice of consecutive rows"):
        itc_loss(image, text, rows=[0, 1])
    with pytest.raises(ValueError, match="select no row"):
        sdm_loss(image, text, torch.arange(4), rows=slice(4, 6))
