"""Pack the adas_mini `traffic_sign` scene (detection):

    bash tools/pipeline.sh --config configs/4pe_traffic_sign/train.py
"""

scene = "traffic_sign"
task = "detection"
# The label of a box is its index in this list.
classes = [
    "traffic_sign",
]

source = "data/adas_mini/traffic_sign"    # relative to the directory you run from
annotations = "annotations.json"          # COCO-style boxes, relative to source
output = "data/rec/traffic_sign"          # {train,val}.{rec,idx} and manifest.json

resize = None                             # None: JPEGs pass through; 160: shorter edge; (W, H)
jpeg_quality = 95                         # used only when re-encoding
val_fraction = 0.1                        # share of images in val, chosen by a hash of the file name
