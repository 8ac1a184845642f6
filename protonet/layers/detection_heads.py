"""DetectionOutput's heads given one per feature map (Synopsys Caffe, the TF converters' form):
`nbottom` confidence heads, then `nbottom` location heads, then the priors (concatenated, or one
PriorBox top per map). With `no_permute` the heads keep the convolutions' layout; with
`ratio_permute` they are flattened coordinate- (class-) major. `SeparateHeads` gathers them into
the concatenated loc/conf/prior blobs of the SSD fork, boxes in the order the fork walks them, so
that the rest of DetectionOutput is the SSD fork's."""
import math

import torch

from protonet.errors import PriorCountError, ProtonetError, ShapeError


def _per_image(shape):
    return math.prod(shape[1:])


def separate_heads(where, p, bottom_shapes, loc_classes, num_classes):
    """A SeparateHeads for Synopsys' bottom counts (detection_output_layer.cpp LayerSetUp), or None
    for the SSD fork's concatenated heads (fewer bottoms than nbottom)."""
    nb, count = p.nbottom, len(bottom_shapes)
    if nb < 1:
        raise ProtonetError(f"{where}: nbottom must be >= 1, got {nb}")
    form = "no_permute" if p.no_permute else "ratio_permute" if p.ratio_permute else ""
    if count < nb and nb > 1:
        if form:
            raise ProtonetError(f"{where}: {form} needs nbottom ({nb}) confidence and location heads and the "
                                f"priors, got {count} bottoms")
        return None
    if p.no_permute and p.ratio_permute:
        raise ProtonetError(f"{where}: give no_permute or ratio_permute, not both")
    if p.ratio_permute and (loc_classes != 1 or nb > 6):
        raise ProtonetError(f"{where}: ratio_permute is for share_location and at most 6 maps (ratio0..ratio5), "
                            f"as in Synopsys Caffe")
    if count == 2 * nb + 1:
        per_map_priors = False
    elif count == 3 * nb:
        per_map_priors = True
        if p.no_permute:
            raise ProtonetError(f"{where}: no_permute takes the priors concatenated (bottom {2 * nb}); Synopsys "
                                f"Caffe has no prior order for one PriorBox per map with it")
    else:
        raise ProtonetError(f"{where}: with nbottom {nb}, give {2 * nb + 1} bottoms (confidences, locations, "
                            f"priors) or {3 * nb} (one PriorBox per map), got {count}")
    return SeparateHeads(where, p, bottom_shapes, nb, per_map_priors, loc_classes, num_classes)


class SeparateHeads:
    """Synopsys Caffe's separate heads. Original order: head n's boxes are its per-image values in
    the SSD order (box-major, then class or coordinate). no_permute: loc n is N x (R*L*4) x H x W
    (channel r*L*4 + c*4 + k), conf n is N x C x R x (H*W). ratio_permute: loc n holds coordinate
    k of box i at k * count + i, conf n class c at c * count + i, R = ratio<n>. In both, boxes run
    ratio first, then cell, and the priors of a concatenated PriorBox top (cell, then ratio) are
    reordered to match (their variances are read unpermuted, as there); ratio_permute's per-map
    priors are coordinate-major too."""

    def __init__(self, where, p, bottom_shapes, nb, per_map_priors, loc_classes, num_classes):
        self.where, self.nb, self.L, self.C = where, nb, loc_classes, num_classes
        self.form = "no_permute" if p.no_permute else "ratio_permute" if p.ratio_permute else "ssd"
        self.per_map_priors = per_map_priors
        confs, locs, priors = bottom_shapes[:nb], bottom_shapes[nb:2 * nb], bottom_shapes[2 * nb:]
        num = confs[0][0]
        if any(s[0] != num for s in confs + locs):
            raise ShapeError(f"{where}: the confidence and location heads have different batch sizes")
        ratios = [p.ratio0, p.ratio1, p.ratio2, p.ratio3, p.ratio4, p.ratio5]
        self.counts, self.ratios = [], []
        for n, (c, l) in enumerate(zip(confs, locs)):
            count, r = self._boxes(n, c, l, ratios[n] if self.form == "ratio_permute" else None)
            self.counts.append(count)
            self.ratios.append(r)
        total = sum(self.counts)
        prior_boxes = sum(s[-1] // 4 if len(s) == 3 else _per_image(s) // 8 for s in priors)
        if prior_boxes != total:
            raise PriorCountError(f"{where}: the {nb} heads predict {total} boxes, the priors are {prior_boxes}")
        self.num_priors = total
        self.shapes = [(num, total * loc_classes * 4), (num, total * num_classes), (1, 2, total * 4)]
        reorder = self.form != "ssd" and not per_map_priors
        self.permutation = self._prior_order() if reorder else None

    def _boxes(self, n, conf, loc, ratios):
        """(boxes, priors per cell or None) of head n, after checking its two blobs agree."""
        where = f"{self.where}: head {n}"
        if self.form == "no_permute":
            if len(loc) != 4 or loc[1] % (4 * self.L):
                raise ShapeError(f"{where}: no_permute takes a location head N x (R*4) x H x W, got {list(loc)}")
            r, cells = loc[1] // (4 * self.L), loc[2] * loc[3]
            if tuple(conf[1:]) != (self.C, r, cells):
                raise ShapeError(f"{where}: no_permute takes a confidence head N x {self.C} x {r} x {cells} "
                                 f"(classes, priors per cell, cells), got {list(conf)}")
            return r * cells, r
        if _per_image(conf) % self.C or _per_image(loc) % (self.L * 4) or \
                _per_image(conf) // self.C != _per_image(loc) // (self.L * 4):
            raise ShapeError(f"{where}: conf {list(conf)} and loc {list(loc)} do not hold the same boxes of "
                             f"{self.C} classes")
        count = _per_image(conf) // self.C
        if ratios is not None and (ratios < 1 or count % ratios):
            raise ShapeError(f"{where}: ratio{n} {ratios} does not divide its {count} boxes into cells")
        return count, ratios

    def _prior_order(self):
        """Index into the concatenated priors of each box in the fork's order (ratio, then cell)."""
        order, start = [], 0
        for count, ratios in zip(self.counts, self.ratios):
            cells = count // ratios
            i = torch.arange(count)
            order.append(start + (i % cells) * ratios + i // cells)
            start += count
        return torch.cat(order)

    def gather(self, bottoms):
        """(loc [N, P*L*4], conf [N, P*C], prior [1, 2, P*4]) from the separate heads."""
        nb = self.nb
        confs, locs, priors = bottoms[:nb], bottoms[nb:2 * nb], bottoms[2 * nb:]
        num = confs[0].shape[0]
        if self.form == "no_permute":
            locs = [l.reshape(num, -1, self.L, 4, l.shape[2] * l.shape[3]).permute(0, 1, 4, 2, 3) for l in locs]
            confs = [c.permute(0, 2, 3, 1) for c in confs]
        elif self.form == "ratio_permute":
            locs = [l.reshape(num, 4, -1).transpose(1, 2) for l in locs]
            confs = [c.reshape(num, self.C, -1).transpose(1, 2) for c in confs]
            if self.per_map_priors:
                priors = [p.reshape(1, 2, 4, -1).transpose(2, 3) for p in priors]
        loc = torch.cat([l.reshape(num, -1) for l in locs], dim=1)
        conf = torch.cat([c.reshape(num, -1) for c in confs], dim=1)
        prior = torch.cat([p.reshape(1, 2, -1) for p in priors], dim=2)
        if self.permutation is not None:
            boxes = prior[:, 0].reshape(-1, 4)[self.permutation.to(prior.device)].reshape(1, -1)
            prior = torch.stack([boxes, prior[:, 1]], dim=1)
        return loc, conf, prior
