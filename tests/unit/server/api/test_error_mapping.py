import grpc

import server.errors as errors
from server.api.errors import STATUS_BY_NAME


def test_every_core_error_has_a_grpc_status():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.RerankdError)]
    assert len(classes) >= 6
    for cls in classes:
        assert cls.status in STATUS_BY_NAME, cls
    assert STATUS_BY_NAME[errors.InvalidArgument.status] == grpc.StatusCode.INVALID_ARGUMENT
    assert STATUS_BY_NAME[errors.Overloaded.status] == grpc.StatusCode.RESOURCE_EXHAUSTED
