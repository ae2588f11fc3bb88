"""The HTTP protocol: the request and response bodies of API.md as pydantic models, in one
package, a module per area (base, operations, tenants, chat, documents, adapters, advisor).

Every route names its success body here (`response_model=`), so /openapi.json documents what a
client gets back, not only what it sends. Response models list exactly the fields the service
answers with: the contract may grow, never lose a field.

Every model is importable from `service.protocol` itself.
"""

from service.protocol.adapters import (  # noqa: F401
    REGISTER_ADAPTER_BODY,
    AdapterByUri,
    AdapterDetail,
    AdapterList,
    AdapterSummary,
    AdapterVersionInfo,
    Rollback,
)
from service.protocol.advisor import (  # noqa: F401
    Advice,
    AdviceRequest,
    DataFinding,
    ExplainRequest,
    Familiarity,
    KnowledgeBaseSize,
    PolicyExplanation,
    RouteExplanation,
    TrainingDataReport,
)
from service.protocol.base import (  # noqa: F401
    ErrorBody,
    ErrorDetail,
    ResponseBody,
)
from service.protocol.chat import (  # noqa: F401
    ChatCompletion,
    ChatRequest,
    Citation,
    CompletionChoice,
    CompletionMessage,
    CompletionUsage,
    Message,
    ModelCard,
    ModelList,
    RouteInfo,
)
from service.protocol.documents import (  # noqa: F401
    UPLOAD_DOCUMENTS_BODY,
    DocumentDetail,
    DocumentList,
    DocumentSummary,
    DocumentVersionInfo,
    JobDocument,
    JobInfo,
    QueuedDocument,
    UploadAccepted,
)
from service.protocol.operations import (  # noqa: F401
    Health,
    NotReady,
    Readiness,
    ReadinessChecks,
)
from service.protocol.tenants import (  # noqa: F401
    KeyRotate,
    KeyRotated,
    TenantCreate,
    TenantCreated,
    TenantInfo,
    TenantPatch,
)

__all__ = [
    "ResponseBody",
    "ErrorDetail",
    "ErrorBody",
    "Health",
    "ReadinessChecks",
    "Readiness",
    "NotReady",
    "TenantCreate",
    "TenantPatch",
    "KeyRotate",
    "TenantInfo",
    "TenantCreated",
    "KeyRotated",
    "Message",
    "ChatRequest",
    "RouteInfo",
    "Citation",
    "CompletionMessage",
    "CompletionChoice",
    "CompletionUsage",
    "ChatCompletion",
    "ModelCard",
    "ModelList",
    "UPLOAD_DOCUMENTS_BODY",
    "QueuedDocument",
    "UploadAccepted",
    "JobDocument",
    "JobInfo",
    "DocumentSummary",
    "DocumentVersionInfo",
    "DocumentDetail",
    "DocumentList",
    "AdapterByUri",
    "Rollback",
    "REGISTER_ADAPTER_BODY",
    "AdapterVersionInfo",
    "AdapterSummary",
    "AdapterDetail",
    "AdapterList",
    "AdviceRequest",
    "ExplainRequest",
    "KnowledgeBaseSize",
    "DataFinding",
    "TrainingDataReport",
    "Familiarity",
    "Advice",
    "RouteExplanation",
    "PolicyExplanation",
]
