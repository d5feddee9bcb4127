"""ATSS target assignment (Zhang et al. 2020) and the per-level training targets of GFL.

Ties are broken identically in both ports: the k nearest anchors per level take the smallest
anchor index first; an anchor positive for several gts goes to the highest IoU, smallest gt
index on a tie.
"""
import torch

from .box_ops import bbox_centers, bbox_overlaps, stable_argsort, unmap

NOT_POSITIVE = -100000000.0  # the official code's -INF marker for "not positive for this gt"
MIN_INSIDE = 0.01  # a positive's centre lies more than this inside its gt box


class ATSSAssigner:

    def __init__(self, topk=9):
        if int(topk) != topk or topk < 1:
            raise ValueError(f"topk = {topk!r} (must be a positive integer)")
        self.topk = int(topk)

    def assign(self, anchors, num_level_anchors, gt_bboxes, gt_labels):
        """-> assigned_gt_inds (A,) int64 (0 = background, i + 1 = gt i), max_overlaps (A,)
        (IoU with the assigned gt, NOT_POSITIVE for background, 0 without gts) and
        assigned_labels (A,) int64 (-1 = background)."""
        num_anchors, num_gts = anchors.shape[0], gt_bboxes.shape[0]
        if sum(num_level_anchors) != num_anchors:
            raise ValueError(f"num_level_anchors {list(num_level_anchors)} sum to "
                             f"{sum(num_level_anchors)}, but there are {num_anchors} anchors")
        if gt_labels.shape[0] != num_gts:
            raise ValueError(f"{num_gts} gt boxes but {gt_labels.shape[0]} gt labels")
        if num_gts == 0 or num_anchors == 0:
            return (torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device),
                    torch.zeros(num_anchors, dtype=anchors.dtype, device=anchors.device),
                    torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device))
        overlaps = bbox_overlaps(anchors, gt_bboxes)  # (A, G)
        anchor_points = bbox_centers(anchors)
        gt_points = bbox_centers(gt_bboxes)
        # Squared distances order the anchors exactly as distances do, without a sqrt whose
        # rounding differs between the frameworks' math libraries.
        offsets = anchor_points[:, None, :] - gt_points[None, :, :]
        distances = (offsets * offsets).sum(dim=-1)  # (A, G)

        candidate_idxs = []
        start = 0
        for level_anchors in num_level_anchors:
            k = min(self.topk, level_anchors)
            if k > 0:
                nearest = stable_argsort(distances[start:start + level_anchors])[:k]
                candidate_idxs.append(nearest + start)
            start += level_anchors
        candidate_idxs = torch.cat(candidate_idxs, dim=0)  # (K, G)
        candidate_overlaps = torch.gather(overlaps, 0, candidate_idxs)
        is_pos = self._above_mean_plus_std(candidate_overlaps)

        gt_index = torch.arange(num_gts, device=anchors.device)
        cand_x = anchor_points[:, 0][candidate_idxs]
        cand_y = anchor_points[:, 1][candidate_idxs]
        inside = torch.stack([cand_x - gt_bboxes[:, 0], cand_y - gt_bboxes[:, 1],
                              gt_bboxes[:, 2] - cand_x, gt_bboxes[:, 3] - cand_y], dim=0)
        is_pos = is_pos & (inside.amin(dim=0) > MIN_INSIDE)

        pos_mask = torch.zeros_like(overlaps, dtype=torch.bool).scatter(0, candidate_idxs, is_pos)
        overlaps_pos = torch.where(pos_mask, overlaps, torch.full_like(overlaps, NOT_POSITIVE))
        max_overlaps = overlaps_pos.amax(dim=1)
        # first (smallest) gt index among the maxima
        is_max = overlaps_pos == max_overlaps[:, None]
        no_gt = torch.full_like(is_max, num_gts, dtype=torch.int64)
        best_gt = torch.where(is_max, gt_index[None, :], no_gt).amin(dim=1)
        assigned = max_overlaps != NOT_POSITIVE
        assigned_gt_inds = torch.where(assigned, best_gt + 1, torch.zeros_like(best_gt))
        best_labels = gt_labels.to(torch.int64)[best_gt.clamp(max=num_gts - 1)]
        assigned_labels = torch.where(assigned, best_labels, torch.full_like(best_gt, -1))
        return assigned_gt_inds, max_overlaps, assigned_labels

    @staticmethod
    def _above_mean_plus_std(candidate_overlaps):
        """IoU >= mean + std (unbiased) per gt column, evaluated as K*IoU >= S + K*std.

        K*IoU, the sum S and K*IoU - S are exact in float64 (float32 IoUs, K <= 45), so the
        comparison does not depend on summation order or division rounding: equal IoUs
        always pass together in both ports. With one candidate std is NaN: none passes.
        """
        k = candidate_overlaps.shape[0]
        if k < 2:
            return torch.zeros_like(candidate_overlaps, dtype=torch.bool)
        scaled = candidate_overlaps.to(torch.float64) * k
        total = candidate_overlaps.to(torch.float64).sum(dim=0)
        deviation = scaled - total
        scaled_std = ((deviation * deviation).sum(dim=0) / (k - 1)).sqrt()
        return scaled >= total + scaled_std

    def get_targets(self, anchors_per_level, valid_flags_per_image, gt_bboxes_list,
                    gt_labels_list, num_classes):
        """Training targets per level, stacked over images (see docs/ARCHITECTURE.md)."""
        num_imgs = len(valid_flags_per_image)
        if not (len(gt_bboxes_list) == len(gt_labels_list) == num_imgs):
            raise ValueError(f"{num_imgs} images of valid flags, {len(gt_bboxes_list)} of gt "
                             f"boxes and {len(gt_labels_list)} of gt labels")
        num_level_anchors = [a.shape[0] for a in anchors_per_level]
        flat_anchors = torch.cat(anchors_per_level, dim=0)
        per_image = [self._targets_single(flat_anchors, flags, boxes, labels, num_classes)
                     for flags, boxes, labels in zip(valid_flags_per_image, gt_bboxes_list,
                                                     gt_labels_list)]
        targets = {"anchors": [], "labels": [], "label_weights": [], "bbox_targets": []}
        start = 0
        for count in num_level_anchors:
            end = start + count
            targets["anchors"].append(flat_anchors[start:end][None].expand(num_imgs, -1, -1))
            for key in ("labels", "label_weights", "bbox_targets"):
                targets[key].append(torch.stack([img[key][start:end] for img in per_image]))
            start = end
        targets["assigned_gt_inds"] = torch.stack([img["assigned_gt_inds"] for img in per_image])
        # mmdetection counts at least one positive per image
        targets["num_total_pos"] = sum(max(img["num_pos"], 1) for img in per_image)
        return targets

    def _targets_single(self, flat_anchors, level_flags, gt_bboxes, gt_labels, num_classes):
        valid = torch.cat(level_flags, dim=0)
        if valid.shape[0] != flat_anchors.shape[0]:
            raise ValueError(f"{valid.shape[0]} valid flags for {flat_anchors.shape[0]} anchors")
        valid_anchors = flat_anchors[valid]
        num_level_valid = [int(flags.sum().item()) for flags in level_flags]
        gt_bboxes = gt_bboxes.reshape(-1, 4).to(flat_anchors.dtype)
        gt_inds, _, labels = self.assign(valid_anchors, num_level_valid, gt_bboxes,
                                         gt_labels.reshape(-1))
        pos = gt_inds > 0
        labels = torch.where(pos, labels, torch.full_like(labels, num_classes))
        if gt_bboxes.shape[0] > 0:
            boxes = gt_bboxes[(gt_inds - 1).clamp(min=0)]
            boxes = torch.where(pos[:, None], boxes, torch.zeros_like(boxes))
        else:
            boxes = torch.zeros_like(valid_anchors)
        return {
            "labels": unmap(labels, valid, num_classes),
            "label_weights": valid.to(flat_anchors.dtype),
            "bbox_targets": unmap(boxes, valid, 0),
            "assigned_gt_inds": unmap(gt_inds, valid, 0),
            "num_pos": int(pos.sum().item()),
        }
