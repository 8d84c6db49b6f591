"""Model adapters for agent loops: `agent_turn`, tools declared once, live token streams.

```python
from dagnats.llm import AnthropicMessages, OpenAIChat, Toolset, agent_turn
```

`OpenAIChat` needs `pip install 'dagnats[openai]'`, `AnthropicMessages` needs
`pip install 'dagnats[anthropic]'`; both import their SDK only when built. `dagnats.llm.fake`
is a fake model server speaking both wire formats from a script (tests, the offline example).

May import `dagnats.agent`, `dagnats.worker*` and `kernel`; nothing in `dagnats/runtime/`
imports this package.
"""

from dagnats.llm.anthropic_messages import AnthropicMessages
from dagnats.llm.live import LIVE_PREFIX, LiveChunk, follow_live, live_subject
from dagnats.llm.model import (
    CallRequest,
    Message,
    Model,
    ModelCallError,
    ModelReply,
    ModelRequest,
    ModelRequestError,
    Price,
    PriceTable,
    ToolSpec,
)
from dagnats.llm.openai_chat import OpenAIChat
from dagnats.llm.tools import Tool, Toolset
from dagnats.llm.turn import TurnState, agent_turn

__all__ = [
    "LIVE_PREFIX",
    "AnthropicMessages",
    "CallRequest",
    "LiveChunk",
    "Message",
    "Model",
    "ModelCallError",
    "ModelReply",
    "ModelRequest",
    "ModelRequestError",
    "OpenAIChat",
    "Price",
    "PriceTable",
    "Tool",
    "ToolSpec",
    "Toolset",
    "TurnState",
    "agent_turn",
    "follow_live",
    "live_subject",
]
