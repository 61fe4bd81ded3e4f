"""Bridges to other tools: Label Studio (ML backend, brush RLE), COCO, PNG masks, webhooks."""
