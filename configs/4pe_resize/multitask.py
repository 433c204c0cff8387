"""4pe_resize: the multitask model of the 4-PE platform, on images resized to 192×128.

Run:  bash tools/quanti_training_2step_fusion_bn.sh --config configs/4pe_resize/multitask.py --ctx 0,1,2,3
Every name below is documented in docs/trainer.md ("The training config").
"""

# Network input (width, height); images are cropped/resized to it. Both must divide by the stride (8).
input_size = (192, 128)
# The shared backbone: (channels, stride) per 3×3 conv unit (conv → BN → ReLU).
backbone = [(16, 2), (16, 1), (32, 2), (32, 1), (48, 2), (48, 1), (48, 1)]
head_channels = 32

# Branches of the shared backbone. `scenes` maps each scene (a key of datasets.yaml) to its classes,
# in the order of the class ids in its records; a detection branch concatenates its scenes' classes.
tasks = {
    "det_cyclist_light": {"kind": "det", "scenes": {"cyclist": ["cyclist"], "traffic_light": ["traffic_light"]}},
    "det_person": {"kind": "det", "scenes": {"pedestrian": ["pedestrian"]}},
    "det_rear": {"kind": "det", "scenes": {"vehicle_rear": ["vehicle_front", "vehicle_rear"]}},
    "det_vehicle_sign": {"kind": "det", "scenes": {"vehicle": ["vehicle"], "traffic_sign": ["traffic_sign"]}},
    "seg_default": {"kind": "seg", "scenes": {"default_parsing": [
        "road", "sidewalk", "building", "wall", "vegetation", "sky", "pole", "traffic_sign", "person",
        "rider", "car", "lane_marking"]}},
    # Lanes are not left/right symmetric classes here, but a mirrored road is still a road.
    "seg_lane": {"kind": "seg", "scenes": {"lane_parsing": ["background", "solid_line", "dashed_line", "road_edge"]}},
}

batch_size = 8          # per device and per branch: one iteration sees 6 × 8 images per device
workers = 2             # decoding threads per branch
log_interval = 20       # iterations between progress lines
seed = 0
datasets = "datasets.yaml"   # relative to this file; --datasets overrides

steps = {
    "with-bn": {"epochs": 30, "lr": 2e-3},
    "fusion-bn-c1": {"epochs": 6, "lr": 4e-4},
    "fusion-bn-c2": {"epochs": 6, "lr": 2e-4},
}

# --pipeline-test: every step, fast, on the validation set. Step 0 gets enough updates (6 × ~6) at a
# higher lr to learn the sample's synthetic scenes: 4 epochs at 2e-3 left the detection AP at 0.5–0.7.
pipeline_test = {
    "steps": {
        "with-bn": {"epochs": 6, "lr": 4e-3},
        "fusion-bn-c1": {"epochs": 1, "lr": 4e-4},
        "fusion-bn-c2": {"epochs": 1, "lr": 2e-4},
    },
    "log_interval": 5,
}
