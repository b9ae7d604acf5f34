"""Response bodies of the API (pydantic), so /docs shows exactly what clients get."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchItem", "BatchResponse", "ClassConfidence", "ClassScore", "ErrorBody", "ExplainResponse",
    "HealthResponse", "ImageInfoOut", "LabelRequest", "LabelVerdict", "ModelInfo", "ModelRef",
    "PredictionPage", "PredictionResponse", "ReadyResponse", "ReloadResponse",
]  # fmt: skip


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. too_large, not_an_image")
    detail: Any = Field(description="what went wrong, for people")
    hint: str | None = Field(None, description="what to do about it")


class ClassScore(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", serialization_alias="class")
    probability: float = Field(description="calibrated probability")


class ClassConfidence(BaseModel):
    """One entry of `top3_predictions`, in the CIFAR-10 seed's words."""

    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", serialization_alias="class")
    confidence: float


class LabelVerdict(BaseModel):
    """One label of a multi-label answer, in the model's class order."""

    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", serialization_alias="class")
    probability: float = Field(description="the label's sigmoid probability")
    threshold: float = Field(description="the probability it must reach (chosen on validation)")
    passed: bool = Field(description="probability >= threshold")


class ModelRef(BaseModel):
    name: str
    version: str
    variant: str


class ImageInfoOut(BaseModel):
    width: int
    height: int
    sha256: str


class PredictionResponse(BaseModel):
    id: str = Field(description="opaque id of the stored prediction")
    predicted: str = Field(description="the predicted class; multi-label: the passing labels "
                           "joined by |")
    confidence: float = Field(description="its calibrated probability; multi-label: the "
                              "highest label probability")
    unknown: bool = Field(description="true when the image looks unlike the training data")
    top_k: list[ClassScore]
    model: ModelRef
    latency_ms: float = Field(description="server time for this image")
    image: ImageInfoOut
    label_token: str = Field(description="lets this client attach the true label later")
    # the CIFAR-10 seed's Flask API answered with these; its clients read them
    success: bool = Field(True, description="always true on a 200 (seed clients check it)")
    prediction: str = Field(description="the predicted class (the seed API's name for it)")
    top3_predictions: list[ClassConfidence] = Field(
        description="the three most probable classes (the seed API's shape)")
    task: Literal["single", "multilabel"] = Field(
        description="single: one class per image (softmax); multilabel: a set of labels")
    labels: list[LabelVerdict] | None = Field(
        None, description="multi-label only: every label with its probability and verdict")
    predicted_labels: list[str] | None = Field(
        None, description="multi-label only: the labels that passed, in class order")


class BatchItem(BaseModel):
    file: str
    ok: bool
    prediction: PredictionResponse | None = None
    error: ErrorBody | None = None
    status: int = 200


class BatchResponse(BaseModel):
    results: list[BatchItem]
    model: ModelRef
    latency_ms: float


class ExplainResponse(BaseModel):
    class_name: str = Field(serialization_alias="class")
    class_index: int
    method: str
    target_layer: str
    top_k: list[ClassScore]
    model: ModelRef
    overlay_png_base64: str
    heatmap_png_base64: str
    image_png_base64: str
    latency_ms: float


class HealthResponse(BaseModel):
    status: str
    uptime_s: float


class ReadyResponse(BaseModel):
    ready: bool
    model: ModelRef | None
    database: str = Field(description="ok | degraded | off")
    database_pending: int
    database_error: str | None = None
    queue: int
    in_flight: int
    torch_loaded: bool = Field(description="whether torch is imported (only /explain loads it)")
    error: str | None = None


class ModelInfo(BaseModel):
    name: str
    version: str
    variant: str
    architecture: str
    classes: list[str]
    input: dict[str, Any]
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    variants: list[str]
    created_at: str | None
    loaded_at: str
    load_seconds: float
    source: str
    max_batch: int
    threads: int = Field(description="ONNX Runtime intra-op threads of the session")
    bundle: dict[str, Any] = Field(description="the rest of bundle.json (data, parity, ...)")
    task: Literal["single", "multilabel"] = Field(
        "single", description="multilabel: answers carry `labels` (see PredictionResponse); "
        "the thresholds are calibration.label_thresholds")


class PredictionPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[dict[str, Any]]


class LabelRequest(BaseModel):
    label: str | None = Field(None, max_length=200, description="the true class (null clears)")
    labels: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=1000, description="multi-label models: the true label set, each one "
        "of the model's labels ([] = none of them); instead of `label`")
    token: str | None = Field(None, description="the label_token of the prediction")


class ReloadResponse(BaseModel):
    swapped: bool
    model: ModelRef
    previous_version: str | None
    load_seconds: float
