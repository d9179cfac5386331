"""The Docker images that run the app, named in CreateTask's prerequisites and the app definition.

Overridable by environment so a node operator who pushes the images under another name can say so.
"""

import os

from fractal_app import __version__

CPU_ENV_ID = "docker_cpu"
GPU_ENV_ID = "docker_gpu"


def image_for_env(env_id: str) -> dict[str, str]:
    """The DockerPrerequisites object ({"image", "tag"}) of the image for a Golem environment."""
    if env_id == GPU_ENV_ID:
        image = os.environ.get("FRACTAL_APP_GPU_IMAGE", "fractal-app-gpu")
    elif env_id == CPU_ENV_ID:
        image = os.environ.get("FRACTAL_APP_CPU_IMAGE", "fractal-app-cpu")
    else:
        raise ValueError(f"unknown environment {env_id!r}: use {CPU_ENV_ID!r} or {GPU_ENV_ID!r}")
    return {"image": image, "tag": os.environ.get("FRACTAL_APP_IMAGE_TAG", __version__)}
