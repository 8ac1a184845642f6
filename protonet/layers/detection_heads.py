"""DetectionOutput's heads given one per feature map (Synopsys Caffe, the TF converters' form):
`nbottom` confidence heads, then `nbottom` location heads, then the priors (concatenated, or one
PriorBox top per map). With `no_permute` the heads keep the convolutions' layout. `SeparateHeads`
gathers them into the concatenated loc/conf/prior blobs of the SSD fork, boxes in the order the
fork walks them, so that the rest of DetectionOutput is the SSD fork's."""
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
    if count < nb and nb > 1:
        if p.no_permute:
            raise ProtonetError(f"{where}: no_permute needs nbottom ({nb}) confidence and location heads and "
                                f"the priors, got {count} bottoms")
        return None
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
    """Synopsys Caffe's separate heads. Original order (no no_permute): head n's boxes are its
    per-image values in the SSD order (prior-major, then class or coordinate). no_permute: loc n
    is N x (R*L*4) x H x W (channel r*L*4 + c*4 + k), conf n is N x C x R x (H*W); boxes run ratio
    first, then cell, and the priors of a concatenated PriorBox top (cell, then ratio) are
    reordered to match (their variances are read unpermuted, as there)."""

    def __init__(self, where, p, bottom_shapes, nb, per_map_priors, loc_classes, num_classes):
        self.where, self.nb, self.no_permute = where, nb, p.no_permute
        self.per_map_priors, self.L, self.C = per_map_priors, loc_classes, num_classes
        confs, locs = bottom_shapes[:nb], bottom_shapes[nb:2 * nb]
        priors = bottom_shapes[2 * nb:]
        self._locs_shapes = locs
        num = confs[0][0]
        if any(s[0] != num for s in confs + locs):
            raise ShapeError(f"{where}: the confidence and location heads have different batch sizes")
        self.counts = [self._boxes(n, c, l) for n, (c, l) in enumerate(zip(confs, locs))]
        total = sum(self.counts)
        prior_boxes = sum(s[-1] // 4 if len(s) == 3 else _per_image(s) // 8 for s in priors)
        if prior_boxes != total:
            raise PriorCountError(f"{where}: the {nb} heads predict {total} boxes, the priors are {prior_boxes}")
        self.num_priors = total
        self.shapes = [(num, total * loc_classes * 4), (num, total * num_classes), (1, 2, total * 4)]
        self.permutation = self._prior_order() if self.no_permute else None

    def _boxes(self, n, conf, loc):
        if not self.no_permute:
            if _per_image(conf) % self.C or _per_image(loc) % (self.L * 4) or \
                    _per_image(conf) // self.C != _per_image(loc) // (self.L * 4):
                raise ShapeError(f"{self.where}: head {n}: conf {list(conf)} and loc {list(loc)} do not hold the "
                                 f"same boxes of {self.C} classes")
            return _per_image(conf) // self.C
        if len(loc) != 4 or loc[1] % (4 * self.L):
            raise ShapeError(f"{self.where}: head {n}: no_permute takes a location head N x (R*4) x H x W, got "
                             f"{list(loc)}")
        ratios, cells = loc[1] // (4 * self.L), loc[2] * loc[3]
        if tuple(conf[1:]) != (self.C, ratios, cells):
            raise ShapeError(f"{self.where}: head {n}: no_permute takes a confidence head N x {self.C} x {ratios} x "
                             f"{cells} (classes, priors per cell, cells), got {list(conf)}")
        return ratios * cells

    def _prior_order(self):
        """Index into the concatenated priors of each box in the fork's order (ratio, then cell)."""
        order, start = [], 0
        for count, loc in zip(self.counts, self._locs_shapes):
            ratios = loc[1] // (4 * self.L)
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
        if self.no_permute:
            loc = torch.cat([l.reshape(num, -1, self.L, 4, l.shape[2] * l.shape[3]).permute(0, 1, 4, 2, 3)
                             .reshape(num, -1) for l in locs], dim=1)
            conf = torch.cat([c.permute(0, 2, 3, 1).reshape(num, -1) for c in confs], dim=1)
        else:
            loc = torch.cat([l.reshape(num, -1) for l in locs], dim=1)
            conf = torch.cat([c.reshape(num, -1) for c in confs], dim=1)
        prior = torch.cat([p.reshape(1, 2, -1) for p in priors], dim=2)
        if self.permutation is not None:
            boxes = prior[:, 0].reshape(-1, 4)[self.permutation.to(prior.device)].reshape(1, -1)
            prior = torch.stack([boxes, prior[:, 1]], dim=1)
        return loc, conf, prior
