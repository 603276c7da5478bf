"""Models and endpoint configs: CreateModel ... DeleteEndpointConfig, and the snapshot of an
endpoint config and its models that an endpoint deploys.

Each call validates, writes the state file, then changes memory, without awaiting in between:
calls run one at a time on the event loop, so concurrent API calls cannot interleave inside one.
Names compare ignoring case, as in SageMaker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ..arns import Arns, ResourceKind
from ..config import Limits
from ..errors import (
    ConfigError,
    EndpointConfigNotFound,
    ModelNotFound,
    RouterError,
    ValidationError,
)
from ..runtime.base import ContainerRuntime
from ..runtime.instances import check_instance_types
from ..spec import EndpointConfigSpec, ModelSpec
from .listing import ListItem, list_page, parse_list_request
from .resources import EndpointConfigRecord, FleetSnapshot, ModelRecord, NameMap
from .store import DuplicateName, ResourceTable, Store, Tags
from .tags import parse_tags
from .validation import check_name

log = logging.getLogger(__name__)

#: Container fields naming model data that a runtime would have to download and mount.
_MODEL_DATA_FIELDS = ("ModelDataUrl", "ModelDataSource")


class Catalog:
    """The models and endpoint configs of one router, in memory and in its state file."""

    def __init__(self, store: Store, runtime: ContainerRuntime, limits: Limits, arns: Arns) -> None:
        self._store = store
        self._runtime = runtime
        self._limits = limits
        self._arns = arns
        self.models: NameMap[ModelRecord] = NameMap()
        self.endpoint_configs: NameMap[EndpointConfigRecord] = NameMap()

    def load(self) -> None:
        """Read back the models and endpoint configs of the state file (at start)."""
        for row in self._store.list_resources("models"):
            try:
                model = ModelSpec.from_stored(row.body)
            except ValidationError as exc:
                raise unreadable(self._store.path, "model", row.name, exc) from exc
            self.models[row.name] = ModelRecord(model, row.created)
        for row in self._store.list_resources("endpoint_configs"):
            try:
                endpoint_config = EndpointConfigSpec.from_request(row.body)
            except ValidationError as exc:
                raise unreadable(self._store.path, "endpoint configuration", row.name, exc) from exc
            self.endpoint_configs[row.name] = EndpointConfigRecord(endpoint_config, row.created)

    # --- models ------------------------------------------------------------------------------

    async def check_model(self, body: Mapping[str, Any]) -> None:
        """CreateModel's checks that ask the runtime about the images (a container engine
        inspects or pulls them and applies SageMaker's accept-bind-to-port rule). Call it
        before :meth:`create_model`, which cannot await."""
        model = ModelSpec.from_request(body, max_containers=self._limits.max_containers_per_model)
        where = "PrimaryContainer" if model.primary else "Containers[{}]"
        await self._runtime.check_model(
            [(c.image, f"{where.format(i)}.Image") for i, c in enumerate(model.containers)]
        )

    def create_model(self, body: Mapping[str, Any]) -> ModelSpec:
        """CreateModel: validate (spec rules, every image mapped), persist, return the model."""
        model = ModelSpec.from_request(body, max_containers=self._limits.max_containers_per_model)
        tags = parse_tags(body.get("Tags"))
        for index, container in enumerate(model.containers):
            self._runtime.check_image(container.image, f"Containers[{index}].Image")
        self._warn_unused_model_data(model)
        created = self._insert("model", self.models, model.name, model.to_request(), tags)
        self.models[model.name] = ModelRecord(model, created)
        return model

    def _warn_unused_model_data(self, model: ModelSpec) -> None:
        # A runtime without the method predates it and mounts nothing either.
        mounts = getattr(self._runtime, "mounts_model_data", None)
        for index, container in enumerate(model.containers):
            if callable(mounts) and mounts(container.image):
                continue
            for field in _MODEL_DATA_FIELDS:
                if field in container.extra:
                    where = "PrimaryContainer" if model.primary else f"Containers[{index}]"
                    log.warning(
                        "CreateModel %s: container %s has %s.%s, which this router's container "
                        "runtime ignores (it downloads and mounts no model data); the container "
                        "starts without it. Put the model into the image, or mount it yourself.",
                        model.name,
                        container.name,
                        where,
                        field,
                    )

    def describe_model(self, name: str) -> dict[str, Any]:
        record = self._model(check_name(name, "ModelName"))
        return record.describe(self._arns.of("model", record.spec.name))

    def list_models(self, params: Mapping[str, Any]) -> dict[str, Any]:
        request = parse_list_request(
            params, operation="ListModels", result_key="Models", sort_keys=("Name", "CreationTime")
        )
        items = [
            ListItem(name, record.created, record.summary(self._arns.of("model", name)))
            for name, record in self.models.items()
        ]
        return list_page(items, request)

    def delete_model(self, name: str) -> None:
        """DeleteModel. Allowed while endpoint configs or endpoints use the model, as in
        SageMaker: endpoints keep serving their snapshot; configs naming it can no longer be
        deployed."""
        record = self._model(check_name(name, "ModelName"))
        self._store.for_change().delete_resource("models", record.spec.name)
        del self.models[record.spec.name]

    def _model(self, name: str) -> ModelRecord:
        record = self.models.get(name)
        if record is None:
            raise ModelNotFound(f'Could not find model "{self._arns.of("model", name)}".')
        return record

    # --- endpoint configs --------------------------------------------------------------------

    def create_endpoint_config(self, body: Mapping[str, Any]) -> EndpointConfigSpec:
        """CreateEndpointConfig: every variant's model must exist."""
        endpoint_config = EndpointConfigSpec.from_request(body)
        tags = parse_tags(body.get("Tags"))
        check_instance_types(endpoint_config.variants)
        for index, variant in enumerate(endpoint_config.variants):
            if variant.model_name not in self.models:
                raise ValidationError(
                    f'Could not find model "{self._arns.of("model", variant.model_name)}" '
                    f"(ProductionVariants[{index}].ModelName); create it with CreateModel first.",
                    field=f"ProductionVariants[{index}].ModelName",
                    rule="must name an existing model",
                )
        created = self._insert(
            "endpoint-config",
            self.endpoint_configs,
            endpoint_config.name,
            endpoint_config.to_request(),
            tags,
        )
        self.endpoint_configs[endpoint_config.name] = EndpointConfigRecord(endpoint_config, created)
        return endpoint_config

    def describe_endpoint_config(self, name: str) -> dict[str, Any]:
        record = self._endpoint_config(check_name(name, "EndpointConfigName"))
        return record.describe(self._arns.of("endpoint-config", record.spec.name))

    def list_endpoint_configs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        request = parse_list_request(
            params,
            operation="ListEndpointConfigs",
            result_key="EndpointConfigs",
            sort_keys=("Name", "CreationTime"),
        )
        items = [
            ListItem(name, record.created, record.summary(self._arns.of("endpoint-config", name)))
            for name, record in self.endpoint_configs.items()
        ]
        return list_page(items, request)

    def delete_endpoint_config(self, name: str) -> None:
        """DeleteEndpointConfig. Allowed while endpoints use it, as in SageMaker: they keep
        serving (and keep reporting its name) until updated to another config."""
        record = self._endpoint_config(check_name(name, "EndpointConfigName"))
        self._store.for_change().delete_resource("endpoint_configs", record.spec.name)
        del self.endpoint_configs[record.spec.name]

    def _endpoint_config(self, name: str) -> EndpointConfigRecord:
        record = self.endpoint_configs.get(name)
        if record is None:
            raise EndpointConfigNotFound(
                f'Could not find endpoint configuration "{self._arns.of("endpoint-config", name)}".'
            )
        return record

    def _insert(
        self,
        kind: Literal["model", "endpoint-config"],
        existing: NameMap[Any],
        name: str,
        body: dict[str, Any],
        tags: Tags,
    ) -> float:
        """Write a new model or endpoint config and its tags to the state file; when it was
        created."""
        store = self._store.for_change()
        if name in existing:
            raise self._already_exists(kind, name)
        created = time.time()
        table: ResourceTable = "models" if kind == "model" else "endpoint_configs"
        try:
            store.insert_resource(table, name, body, created, tags)
        except DuplicateName:
            raise self._already_exists(kind, name) from None
        return created

    def _already_exists(self, kind: ResourceKind, name: str) -> ValidationError:
        what = {"model": "model", "endpoint-config": "endpoint configuration"}[kind]
        return ValidationError(
            f'Cannot create already existing {what} "{self._arns.of(kind, name)}". Names are '
            "unique ignoring case; pick another name, or delete the existing one first.",
            field="ModelName" if kind == "model" else "EndpointConfigName",
            rule="must be unique",
        )

    # --- what an endpoint deploys ------------------------------------------------------------

    def snapshot(self, config_name: str) -> FleetSnapshot:
        """The endpoint config and its models as they are now, every image runnable here."""
        config_record = self.endpoint_configs.get(config_name)
        if config_record is None:
            raise ValidationError(
                "Could not find endpoint configuration "
                f'"{self._arns.of("endpoint-config", config_name)}"; create it with '
                "CreateEndpointConfig first.",
                field="EndpointConfigName",
                rule="must name an existing endpoint configuration",
            )
        endpoint_config = config_record.spec
        models: dict[str, ModelSpec] = {}
        for index, variant in enumerate(endpoint_config.variants):
            model_record = self.models.get(variant.model_name)
            if model_record is None:
                raise ValidationError(
                    f'Could not find model "{self._arns.of("model", variant.model_name)}", '
                    f"named by ProductionVariants[{index}].ModelName of endpoint configuration "
                    f'"{endpoint_config.name}": it was deleted after the configuration was '
                    "created. Create the model again, or use another endpoint configuration.",
                    field="EndpointConfigName",
                    rule="every model of the endpoint configuration must exist",
                )
            for position, container in enumerate(model_record.spec.containers):
                self._runtime.check_image(
                    container.image, f"model {model_record.spec.name} Containers[{position}].Image"
                )
            models[variant.model_name] = model_record.spec
        return FleetSnapshot(endpoint_config, models, time.time())


def unreadable(state_path: Path, what: str, name: str, exc: Exception) -> ConfigError:
    """A row of the state file that this version cannot read back."""
    detail = exc.message if isinstance(exc, RouterError) else repr(exc)
    return ConfigError(
        f"state file {state_path}: the stored {what} {name!r} cannot be read "
        f"({detail}). Was the file written by another version of mce-router?"
    )
