#!/bin/bash
# List files for COCO straight from the instances JSON files (no per-image split step):
#   train.txt (shuffled), minival.txt + minival_name_size.txt ("image_id height width").
# Layout: $root/images/{train2017,val2017}, $root/annotations/instances_{train2017,val2017}.json
# Usage: create_list.sh [COCO_DIR] [OUT_DIR] [TRAIN_SET] [VAL_SET]
set -euo pipefail
root_dir=${1:-$HOME/data/coco}
out_dir=${2:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"}
train_set=${3:-train2017}
val_set=${4:-val2017}
protonet create-list coco "$root_dir" "$out_dir/train.txt" \
  --instances "annotations/instances_$train_set.json" --images "images/$train_set" --shuffle
protonet create-list coco "$root_dir" "$out_dir/minival.txt" \
  --instances "annotations/instances_$val_set.json" --images "images/$val_set" \
  --name-size "$out_dir/minival_name_size.txt"
