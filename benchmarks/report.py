"""results.json → results.md (placeholder)."""
import json
def render(out):
    return "```\n" + json.dumps(out, indent=1)[:5000] + "\n```\n"
