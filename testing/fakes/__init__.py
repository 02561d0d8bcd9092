"""Local fakes of each provider's wire protocol, for the real clients to talk to."""

from tollbridge.testing import require_extra

require_extra()
