"""GlamBook's tools (placeholder until the salon database lands)."""

from pipeline.tools import Tool, ToolCall


async def opening_hours(args: dict, call: ToolCall) -> dict:
    return {"hours": "Tuesday to Saturday, 9am to 7pm; closed Sunday and Monday"}


TOOLS = [
    Tool(
        name="opening_hours",
        description="The salon's opening hours.",
        handler=opening_hours,
    )
]
