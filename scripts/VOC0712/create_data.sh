#!/bin/bash
# LMDBs of AnnotatedDatum for VOC07+12, as the fork's data/VOC0712/create_data.sh:
#   $data_root_dir/VOC0712/lmdb/VOC0712_{trainval,test}_lmdb, linked under examples/VOC0712.
# Run create_list.sh first. Usage: create_data.sh [VOCDEVKIT_DIR] [LIST_DIR] [LABELMAP]
set -euo pipefail
data_root_dir=${1:-$HOME/data/VOCdevkit}
list_dir=${2:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"}
mapfile=${3:-$list_dir/labelmap_voc.prototxt}
dataset_name="VOC0712"
db="lmdb"
min_dim=0
max_dim=0
width=0
height=0
extra_cmd="--encode-type=jpg --encoded --redo"
for subset in trainval test
do
  protonet create-annoset --anno-type=detection --label-type=xml --label-map-file="$mapfile" \
    --min-dim=$min_dim --max-dim=$max_dim --resize-width=$width --resize-height=$height \
    --check-label $extra_cmd "$data_root_dir" "$list_dir/$subset.txt" \
    "$data_root_dir/$dataset_name/$db/${dataset_name}_${subset}_${db}" "examples/$dataset_name"
done
