"""cove.generation: text generation with transformers' names and semantics.

    from cove.generation import GenerationConfig, TextStreamer

    out = model.generate(**inputs, max_new_tokens=32)                    # greedy
    out = model.generate(**inputs, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=32)
    out = model.generate(**inputs, num_beams=4, num_return_sequences=2, max_new_tokens=32)
    out = model.generate(**inputs, stop_strings=["\\n\\n"], tokenizer=tokenizer)
    model.generate(**inputs, streamer=TextStreamer(tokenizer, skip_prompt=True))

Causal LMs get `generate` from `GenerationMixin`; their defaults come from the checkpoint's
generation_config.json (or, without one, from config.json's special tokens).
"""

from cove.generation.configuration import GENERATION_CONFIG_NAME, GenerationConfig
from cove.generation.logits_process import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessor,
    LogitsProcessorList,
    LogitsWarper,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    apply_temperature,
    min_p_filter,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from cove.generation.stopping_criteria import (
    EosTokenCriteria,
    MaxLengthCriteria,
    MaxTimeCriteria,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
from cove.generation.streamers import BaseStreamer, TextIteratorStreamer, TextStreamer
from cove.generation.utils import (
    BeamSampleDecoderOnlyOutput,
    BeamSearchDecoderOnlyOutput,
    GenerateBeamDecoderOnlyOutput,
    GenerateDecoderOnlyOutput,
    GenerateOutput,
    GenerationMixin,
    GreedySearchDecoderOnlyOutput,
    SampleDecoderOnlyOutput,
)

__all__ = [
    "GENERATION_CONFIG_NAME", "BaseStreamer", "BeamSampleDecoderOnlyOutput",
    "BeamSearchDecoderOnlyOutput", "EosTokenCriteria", "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor", "GenerateBeamDecoderOnlyOutput",
    "GenerateDecoderOnlyOutput", "GenerateOutput", "GenerationConfig", "GenerationMixin",
    "GreedySearchDecoderOnlyOutput", "InfNanRemoveLogitsProcessor", "LogitNormalization",
    "LogitsProcessor", "LogitsProcessorList", "LogitsWarper", "MaxLengthCriteria",
    "MaxTimeCriteria", "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper", "NoBadWordsLogitsProcessor", "NoRepeatNGramLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "SampleDecoderOnlyOutput",
    "StopStringCriteria", "StoppingCriteria", "StoppingCriteriaList",
    "SuppressTokensAtBeginLogitsProcessor", "SuppressTokensLogitsProcessor",
    "TemperatureLogitsWarper", "TextIteratorStreamer", "TextStreamer", "TopKLogitsWarper",
    "TopPLogitsWarper", "apply_temperature", "min_p_filter", "repetition_penalty",
    "top_k_filter", "top_p_filter",
]
