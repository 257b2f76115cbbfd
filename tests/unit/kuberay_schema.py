"""A JSON schema for the parts of KubeRay's ray.io/v1 RayCluster and RayJob CRDs that raytrain's manifests use.

The published CRD YAML is not reachable from the machines this project is built on (only PyPI is), so this
is a transcription of the CRD's structure (field names and types from KubeRay's v1 API types): unknown
fields at the ray.io levels are errors, as are rayStartParams values that are not strings (a classic
mistake: `num-cpus: 0` instead of `"0"`), quantities that are neither integers nor quantity strings, and
containers without a name or image.
"""

QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9.]+([KMGTPE]i?|[mun])?$"}]}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

ENV = {"type": "array", "items": {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": {
        "type": "object", "additionalProperties": False, "properties": {
            "secretKeyRef": {"type": "object", "required": ["key"], "additionalProperties": False,
                             "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                            "optional": {"type": "boolean"}}},
            "configMapKeyRef": {"type": "object", "required": ["key"]},
            "fieldRef": {"type": "object", "required": ["fieldPath"]}}}}}}

CONTAINER = {
    "type": "object", "required": ["name", "image"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "image": {"type": "string"}, "imagePullPolicy": {"type": "string"},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": ENV,
        "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"],
                                             "properties": {"containerPort": {"type": "integer"},
                                                            "name": {"type": "string"}}}},
        "resources": {"type": "object", "additionalProperties": False, "properties": {
            "requests": {"type": "object", "additionalProperties": QUANTITY},
            "limits": {"type": "object", "additionalProperties": QUANTITY}}},
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}},
    },
}

POD_TEMPLATE = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["containers"], "properties": {
            "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
            "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
            "serviceAccountName": {"type": "string"},
            "nodeSelector": STRING_MAP,
        }},
    },
}

HEAD_GROUP = {"type": "object", "required": ["template"], "additionalProperties": False, "properties": {
    "rayStartParams": STRING_MAP, "template": POD_TEMPLATE, "serviceType": {"type": "string"},
    "enableIngress": {"type": "boolean"}, "headService": {"type": "object"}}}

WORKER_GROUP = {"type": "object", "required": ["groupName", "template"], "additionalProperties": False,
                "properties": {
                    "groupName": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
                    "numOfHosts": {"type": "integer", "minimum": 1}, "rayStartParams": STRING_MAP,
                    "template": POD_TEMPLATE, "suspend": {"type": "boolean"}, "idleTimeoutSeconds": {"type": "integer"},
                    "scaleStrategy": {"type": "object"}}}

RAY_CLUSTER_SPEC = {"type": "object", "required": ["headGroupSpec"], "additionalProperties": False, "properties": {
    "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
    "autoscalerOptions": {"type": "object"}, "headGroupSpec": HEAD_GROUP,
    "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP}, "suspend": {"type": "boolean"},
    "managedBy": {"type": "string"}, "headServiceAnnotations": STRING_MAP,
    "gcsFaultToleranceOptions": {"type": "object"}, "authOptions": {"type": "object"}}}

METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
    "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP}}

RAY_CLUSTER = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"}, "metadata": METADATA,
    "spec": RAY_CLUSTER_SPEC}}

RAY_JOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": METADATA,
    "spec": {"type": "object", "additionalProperties": False, "properties": {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": {"type": "integer", "minimum": 0},
        "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": POD_TEMPLATE, "metadata": STRING_MAP,
        "clusterSelector": STRING_MAP, "submitterConfig": {"type": "object"}, "managedBy": {"type": "string"},
        "deletionStrategy": {"type": "object"}, "entrypoint": {"type": "string"},
        "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
        "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"},
        "schedule": {"type": "string"}}}}}

BY_KIND = {"RayCluster": RAY_CLUSTER, "RayJob": RAY_JOB}
